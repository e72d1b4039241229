--[[ heartbeat.lua: register a worker as alive and extend its leases.

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] now, [3] worker id, [4] worker JSON, then pairs job id, lease token.
Touches: {P}:workers (id -> JSON), {P}:wseen (id by now), {P}:jq (read, for old tokens only),
  {P}:q/Q/j:<id> (lease_expires_at), {P}:q/Q/lease (score), {P}:q/Q/cfg (read).
  The revision is not bumped: lease_expires_at is not part of the public resource.
Returns: {lost job ids, job ids whose cancel was requested}.
]]
local now = tonumber(ARGV[2])
redis.call('HSET', gk('workers'), ARGV[3], ARGV[4])
redis.call('ZADD', gk('wseen'), fmt(now), ARGV[3])
local lost, cancel = {}, {}
for i = 5, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local q = token_queue(id, token)
  local v = false
  if q then v = redis.call('HMGET', jkey(q, id), 'status', 'lease_token', 'cancel_requested') end
  if not v or v[1] ~= 'running' or v[2] ~= token then
    lost[#lost + 1] = id
  else
    local exp = now + cfg(q).vt
    redis.call('HSET', jkey(q, id), 'lease_expires_at', fmt(exp))
    redis.call('ZADD', qk(q, 'lease'), ims(ms(exp)), id)
    if v[3] == '1' then cancel[#cancel + 1] = id end
  end
end
return { lost, cancel }
