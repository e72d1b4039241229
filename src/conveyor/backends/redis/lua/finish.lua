--[[ finish.lua: apply outcomes whose lease token still holds.

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] now, [3] JSON list of outcomes, each [job id, token, status
  (succeeded|failed|cancelled|retrying|queued), result JSON ('' = none), error JSON ('' = none),
  scheduled_at ('' = none), attempt ('' = unchanged), uncount delivery ('1'|'0')].
Touches: {P}:jq (read), {P}:q/Q/j:<id>, {P}:q/Q/lease|ready|sched|done|s:*|c:<id>|wake, {P}:s:*,
  {P}:wh (webhook outbox), and the records and indexes of dependents (released or cancelled).
A 'queued' outcome (hand-back) of a job whose cancel was requested ends it 'cancelled' instead.
Returns: a string with one character per outcome: '1' applied, '0' token no longer holds.
]]
local now = tonumber(ARGV[2])
local out = {}
for _, a in ipairs(cjson.decode(ARGV[3])) do
  local id, token, st = a[1], a[2], a[3]
  local result, err, sa, attempt, uncount = a[4], a[5], a[6], a[7], a[8]
  local q = redis.call('HGET', JQ, id)
  local ok = 0
  if q then
    local key = jkey(q, id)
    local v = redis.call('HMGET', key, 'status', 'lease_token', 'cancel_requested')
    if v[1] == 'running' and v[2] == token then
      ok = 1
      if st == 'queued' and v[3] == '1' then  -- cancellation is stored: not run again
        st, uncount = 'cancelled', '0'
        err = cjson.encode({ type = 'Cancelled', message = 'cancelled while its worker handed it back',
          traceback = cjson.null })
      end
      end_attempt(key, now, st == 'queued' and 'handed_back' or st, err)
      if attempt ~= '' then redis.call('HSET', key, 'attempt', attempt) end
      if result ~= '' then redis.call('HSET', key, 'result', result) end
      if err ~= '' then redis.call('HSET', key, 'error', err) end
      if st == 'succeeded' then
        if err == '' then redis.call('HDEL', key, 'error') end
        make_terminal(q, id, key, 'running', st, now, nil)
      elseif st == 'failed' or st == 'cancelled' then
        make_terminal(q, id, key, 'running', st, now, nil)
      elseif st == 'retrying' then
        make_scheduled(q, id, key, 'running', 'retrying', tonumber(sa) or now, now)
      elseif st == 'queued' then
        if uncount == '1' then redis.call('HINCRBY', key, 'deliveries', -1) end
        make_ready(q, id, key, 'running', now, nil)
      else
        return redis.error_reply('unsupported outcome status ' .. st)
      end
    end
  end
  out[#out + 1] = tostring(ok)
end
propagate(now)
flush_wake()
return table.concat(out)
