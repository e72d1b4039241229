--[[ requeue.lua: put jobs in the given statuses back to queued, attempts and deliveries reset.

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] now, [3] queue ('' = any), [4] statuses (comma list), [5] limit,
  [6..] job ids (none = scan {P}:q/Q/s:<status> of the queue, or of every queue when [3] is '').
Touches: {P}:jq|queues (read), {P}:q/Q/j:<id>, {P}:q/Q/s:*|done|ready|sched|lease|wake, {P}:wh|wha.
A job with parents (depends_on) goes back to 'queued' when they all succeeded, or to 'waiting'
while one is pending (it joins their {P}:q/PQ/c:<parent> sets, _np = how many). A job whose
parent ended failed/cancelled/expired, or is gone, would run without its parent's result: among
the given ids it refuses the whole call, when scanning it is left as it is.
Returns: a JSON list of the requeued job records (at most `limit` when scanning), or
  {'!', job id, parent id, parent status ('' = gone)} for a refusal, with no write.
]]
local now = tonumber(ARGV[2])
local only_q = ARGV[3]
local limit = tonumber(ARGV[5])
local wanted = {}
local statuses = {}
for s in string.gmatch(ARGV[4], '[^,]+') do wanted[s] = true; statuses[#statuses + 1] = s end
local out = {}
local OK = { succeeded = true, waiting = true, scheduled = true, queued = true, running = true, retrying = true }

-- the parents of the job at key still pending (parent id -> its queue), or false plus the first
-- parent that ended badly (or is gone) and its status ('' = gone)
local function parents(key)
  local pending = {}
  local raw = redis.call('HGET', key, 'depends_on')
  if not raw or raw == '[]' then return pending end
  for _, parent in ipairs(cjson.decode(raw)) do
    local pq = redis.call('HGET', JQ, parent)
    local pst = pq and redis.call('HGET', jkey(pq, parent), 'status')
    if not pst or not OK[pst] then return false, parent, pst or '' end
    if pst ~= 'succeeded' then pending[parent] = pq end
  end
  return pending
end

-- back to waiting: counted and listed as a child of each pending parent (as enqueue does)
local function make_waiting(q, id, key, old, pending)
  local n = 0
  for parent, pq in pairs(pending) do
    redis.call('SADD', qk(pq, 'c:' .. parent), id)
    redis.call('HSET', jkey(pq, parent), '_hc', '1')
    n = n + 1
  end
  redis.call('HSET', key, 'status', 'waiting', '_np', n, 'updated_at', fmt(now))
  redis.call('HDEL', key, 'lease_token', 'lease_expires_at', '_ra')
  redis.call('HINCRBY', key, 'revision', 1)
  set_status(q, id, old, 'waiting')
end

local function requeue(q, id, key, st, pending)
  redis.call('HSET', key, 'attempt', 1, 'deliveries', 0, 'cancel_requested', '0')
  redis.call('HDEL', key, 'error', 'result', 'finished_at', 'started_at', 'progress', 'worker_id',
    'scheduled_at')
  redis.call('ZREM', qk(q, 'done'), id)
  redis.call('ZREM', gk('wh'), id)
  redis.call('HDEL', gk('wha'), id)
  if next(pending) then make_waiting(q, id, key, st, pending) else make_ready(q, id, key, st, now, ms(now)) end
  out[#out + 1] = hobj(key)
end

if #ARGV >= 6 then
  -- every given job is checked before any is moved: a refusal writes nothing
  local todo = {}
  for i = 6, #ARGV do
    local id = ARGV[i]
    local q = redis.call('HGET', JQ, id)
    if q and (only_q == '' or q == only_q) then
      local key = jkey(q, id)
      local st = redis.call('HGET', key, 'status')
      if st and wanted[st] then
        local pending, parent, pst = parents(key)
        if not pending then return { '!', id, parent, pst } end
        todo[#todo + 1] = { q, id, key, st, pending }
      end
    end
  end
  for _, t in ipairs(todo) do requeue(t[1], t[2], t[3], t[4], t[5]) end
else
  local queues = { only_q }
  if only_q == '' then queues = redis.call('SMEMBERS', gk('queues')) end
  for _, q in ipairs(queues) do
    for _, s in ipairs(statuses) do
      -- the jobs left as they are stay in the index: page past them
      local skipped = 0
      while #out < limit do
        local ids = redis.call('ZRANGE', qk(q, 's:' .. s), skipped, skipped + limit - #out - 1)
        if #ids == 0 then break end
        for _, id in ipairs(ids) do
          local key = jkey(q, id)
          local pending = parents(key)
          if pending and redis.call('HGET', key, 'status') == s then
            requeue(q, id, key, s, pending)
          else
            skipped = skipped + 1
          end
        end
      end
    end
  end
end
flush_wake()
return jlist(out)
