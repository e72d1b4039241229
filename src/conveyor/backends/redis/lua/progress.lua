--[[ progress.lua: record progress if the lease token still holds.

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] now, [3] job id, [4] token, [5] progress JSON.
Touches: {P}:jq (read, for old tokens only), {P}:q/Q/j:<id> (progress, updated_at, revision).
Returns: 1 when recorded, else 0.
]]
local q = token_queue(ARGV[3], ARGV[4])
if not q then return 0 end
local key = jkey(q, ARGV[3])
local v = redis.call('HMGET', key, 'status', 'lease_token')
if v[1] ~= 'running' or v[2] ~= ARGV[4] then return 0 end
redis.call('HSET', key, 'progress', ARGV[5], 'updated_at', fmt(tonumber(ARGV[2])))
redis.call('HINCRBY', key, 'revision', 1)
return 1
