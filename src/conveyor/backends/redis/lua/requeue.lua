--[[ requeue.lua: put jobs in the given statuses back to queued, attempts and deliveries reset.

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] now, [3] queue ('' = any), [4] statuses (comma list), [5] limit,
  [6..] job ids (none = scan {P}:q/Q/s:<status> of the queue, or of every queue when [3] is '').
Touches: {P}:jq|queues (read), {P}:q/Q/j:<id>, {P}:q/Q/s:*|done|ready|sched|lease|wake, {P}:wh|wha.
Returns: a JSON list of the requeued job records (at most `limit` when scanning).
]]
local now = tonumber(ARGV[2])
local only_q = ARGV[3]
local limit = tonumber(ARGV[5])
local wanted = {}
local statuses = {}
for s in string.gmatch(ARGV[4], '[^,]+') do wanted[s] = true; statuses[#statuses + 1] = s end
local out = {}

local function requeue(q, id)
  local key = jkey(q, id)
  local st = redis.call('HGET', key, 'status')
  if not st or not wanted[st] then return end
  redis.call('HSET', key, 'attempt', 1, 'deliveries', 0, 'cancel_requested', '0')
  redis.call('HDEL', key, 'error', 'result', 'finished_at', 'started_at', 'progress', 'worker_id',
    'scheduled_at')
  redis.call('ZREM', qk(q, 'done'), id)
  redis.call('ZREM', gk('wh'), id)
  redis.call('HDEL', gk('wha'), id)
  make_ready(q, id, key, st, now, ms(now))
  out[#out + 1] = hobj(key)
end

if #ARGV >= 6 then
  for i = 6, #ARGV do
    local q = redis.call('HGET', JQ, ARGV[i])
    if q and (only_q == '' or q == only_q) then requeue(q, ARGV[i]) end
  end
else
  local queues = { only_q }
  if only_q == '' then queues = redis.call('SMEMBERS', gk('queues')) end
  for _, q in ipairs(queues) do
    for _, s in ipairs(statuses) do
      if #out >= limit then break end
      local ids = redis.call('ZRANGE', qk(q, 's:' .. s), 0, limit - #out - 1)
      for _, id in ipairs(ids) do requeue(q, id) end
    end
  end
end
flush_wake()
return jlist(out)
