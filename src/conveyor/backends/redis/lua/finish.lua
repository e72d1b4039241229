--[[ finish.lua: apply outcomes whose lease token still holds.

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] now, then 8 strings per outcome: job id, token, status
  (succeeded|failed|cancelled|retrying|queued), result JSON ('' = none), error JSON ('' = none),
  scheduled_at ('' = none), attempt ('' = unchanged), uncount delivery ('1'|'0').
Touches: {P}:jq (read, only for tokens that do not name their queue), {P}:q/Q/j:<id>, {P}:q/Q/lease|ready|sched|done|s:*|c:<id>|wake, {P}:lr:<key>,
  {P}:wh|wha (webhook outbox), and the records and indexes of dependents (released or cancelled).
A 'queued' outcome (hand-back) of a job whose cancel was requested ends it 'cancelled' instead.
Returns: a string with one character per outcome: '1' applied, '0' token no longer holds. An
outcome sent again after its reply was lost is '1': the record keeps the token and status that
ended its lease (_ft = '<token>:<status>').
]]
local now = tonumber(ARGV[2])
local OUTCOME = { succeeded = true, failed = true, cancelled = true, retrying = true, queued = true }
for a = 5, #ARGV, 8 do  -- checked before any write: an error reply must leave nothing half done
  if not OUTCOME[ARGV[a]] then return redis.error_reply('unsupported outcome status ' .. ARGV[a]) end
end

-- The index writes of the jobs this call ends go out as one ZREM/ZADD per key at the end, not four
-- calls per job: nothing below reads those entries, and a job ends at most once per call, so no
-- member is both added and removed.
local batch = { ZREM = { keys = {} }, ZADD = { keys = {} } }
zwrite = function(op, k, a, b)
  local per = batch[op]
  local l = per[k]
  if not l then l = {}; per[k] = l; per.keys[#per.keys + 1] = k end
  l[#l + 1] = a
  if b then l[#l + 1] = b end  -- ZADD: score, member
end

local out = {}
for a = 3, #ARGV, 8 do
  local id, token, st = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local result, err, sa, attempt, uncount = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]
  local q = token_queue(id, token)
  local ok = 0
  if q then
    local key = jkey(q, id)
    local v = redis.call('HMGET', key, 'status', 'lease_token', 'cancel_requested', 'attempts',
      'revision', 'webhook', '_hc', 'limit_key', 'error', '_ft')
    local sent = token .. ':' .. st
    if v[10] == sent then
      ok = 1  -- applied already: this is the same outcome sent again
    elseif v[1] == 'running' and v[2] == token then
      ok = 1
      if st == 'queued' and v[3] == '1' then  -- cancellation is stored: not run again
        st, uncount = 'cancelled', '0'
        err = cjson.encode({ type = 'Cancelled', message = 'cancelled while its worker handed it back',
          traceback = cjson.null })
      end
      local f = { '_ft', sent }  -- field/value pairs written with the transition
      local label = st
      if st == 'queued' then label = err ~= '' and 'lost' or 'handed_back' end  -- lost: its process died
      local timeline = attempt_ended(v[4], now, label, err)
      if timeline then f[#f + 1] = 'attempts'; f[#f + 1] = timeline end
      if attempt ~= '' then f[#f + 1] = 'attempt'; f[#f + 1] = attempt end
      if result ~= '' then f[#f + 1] = 'result'; f[#f + 1] = result end
      if err ~= '' and st ~= 'queued' then f[#f + 1] = 'error'; f[#f + 1] = err end  -- lost: timeline only
      if st == 'succeeded' or st == 'failed' or st == 'cancelled' then
        if st == 'succeeded' and err == '' and v[9] then redis.call('HDEL', key, 'error') end
        -- v[5..8]: revision, webhook, _hc, limit_key; the lease token is there (it matched)
        make_terminal(q, id, key, 'running', st, now, nil, { v[5], v[6], v[7], v[2], v[8] }, f)
      else  -- retrying or queued
        redis.call('HSET', key, unpack(f))
        if st == 'retrying' then
          make_scheduled(q, id, key, 'running', 'retrying', tonumber(sa) or now, now)
        else
          if uncount == '1' then redis.call('HINCRBY', key, 'deliveries', -1) end
          make_ready(q, id, key, 'running', now, nil)
        end
      end
    end
  end
  out[#out + 1] = ok == 1 and '1' or '0'
end
if PROP[1] then propagate(now) end
for _, op in ipairs({ 'ZREM', 'ZADD' }) do
  for _, k in ipairs(batch[op].keys) do call_with(op, k, batch[op][k]) end
end
if next(WAKE) then flush_wake() end
return table.concat(out)
