--[[ webhooks.lua: the webhook outbox (jobs that turned terminal with a webhook URL).

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] mode:
  'due', [3] now, [4] limit, [5] lease seconds: return due deliveries and hide them for `lease`;
  'done', [3] job id, [4] delivered ('1'|'0'), [5] next attempt time ('' = give up):
     record an attempt.
Touches: {P}:wh (zset id by next attempt ms), {P}:wha (hash id -> attempts made), {P}:jq (read),
  {P}:q/Q/j:<id> (read).
Returns: 'due': a JSON list of [attempts, record]; 'done': 1.
]]
local WH, WHA = gk('wh'), gk('wha')
if ARGV[2] == 'due' then
  local now, limit, lease = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local ids = redis.call('ZRANGEBYSCORE', WH, '-inf', ims(ms(now)), 'LIMIT', 0, limit)
  local out = {}
  for _, id in ipairs(ids) do
    local q = redis.call('HGET', JQ, id)
    if q then
      redis.call('ZADD', WH, ims(ms(now + lease)), id)
      out[#out + 1] = { tonumber(redis.call('HGET', WHA, id)) or 0, hobj(jkey(q, id)) }
    else
      redis.call('ZREM', WH, id)
      redis.call('HDEL', WHA, id)
    end
  end
  return jlist(out)
end
local id = ARGV[3]
if ARGV[4] == '1' or ARGV[5] == '' then
  redis.call('ZREM', WH, id)
  redis.call('HDEL', WHA, id)
elseif redis.call('ZSCORE', WH, id) then
  redis.call('ZADD', WH, ims(ms(tonumber(ARGV[5]))), id)
  redis.call('HINCRBY', WHA, id, 1)
end
return 1
