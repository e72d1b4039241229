--[[ cancel.lua: cancel a pending job at once, or flag a running one.

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] now, [3] job id.
Touches: {P}:jq (read), {P}:q/Q/j:<id>, {P}:q/Q/ready|sched|done|s:*|c:<id>, {P}:wh,
  and the records of dependents (cancelled transitively).
Returns: the job record as JSON after the change, or '' when the id is unknown.
]]
local now = tonumber(ARGV[2])
local id = ARGV[3]
local q = redis.call('HGET', JQ, id)
if not q then return '' end
local key = jkey(q, id)
local st = redis.call('HGET', key, 'status')
if st == 'waiting' or st == 'scheduled' or st == 'queued' or st == 'retrying' then
  make_terminal(q, id, key, st, 'cancelled', now, nil)
  propagate(now)
elseif st == 'running' and redis.call('HGET', key, 'cancel_requested') ~= '1' then
  redis.call('HSET', key, 'cancel_requested', '1', 'updated_at', fmt(now))
  redis.call('HINCRBY', key, 'revision', 1)
end
return cjson.encode(hobj(key))
