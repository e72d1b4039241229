--[[ purge.lua: cancel ready jobs (queued, scheduled, retrying) of one queue.

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] now, [3] queue, [4] limit.
Touches: {P}:q/Q/s:queued|scheduled|retrying (read), {P}:q/Q/j:<id>, {P}:q/Q/ready|sched|done|s:*|c:<id>,
  {P}:wh, and the records of dependents (cancelled transitively).
Returns: how many jobs were cancelled (at most limit; call again while it returns limit).
]]
local now = tonumber(ARGV[2])
local q = ARGV[3]
local limit = tonumber(ARGV[4])
local n = 0
for _, s in ipairs({ 'queued', 'scheduled', 'retrying' }) do
  if n >= limit then break end
  local ids = redis.call('ZRANGE', qk(q, 's:' .. s), 0, limit - n - 1)
  for _, id in ipairs(ids) do
    make_terminal(q, id, jkey(q, id), s, 'cancelled', now, nil)
    n = n + 1
  end
end
propagate(now)
return n
