--[[ enqueue.lua: store jobs atomically (idempotency keys, dependencies, ready/scheduled indexes).

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] now, [3] number of jobs, then per job, flat:
      id, queue, task, priority, created_at, scheduled_at ('' = not held until a time), idempotency
      key ('' = none), number of parents n, n parent ids (depends_on), number of record strings m,
      m more record field/value strings (the record's id, task, queue, created_at, priority (unless
      0), idempotency_key (unless ''), status, revision and _ra/_ord/_np are written from the above).
Touches: {P}:q/Q/j:<id>, {P}:q/Q/ready|sched|done|i|s:*|c:<parent>|wake, {P}:jq|queues|t:<task>|idem|wh.
Returns: per job one string: for a new job its status ('queued', 'scheduled', 'waiting'), or the
         DependencyFailed error JSON (starts with '{') when it was created cancelled; for an existing
         job (same id or idempotency key) '=' followed by its record as JSON.
         Or {'!', job index, parent index (0-based), parent id} for an unknown parent, with no write.
]]
local now = tonumber(ARGV[2])
local IDEM = gk('idem')

-- parse (ARGV ranges, no copies of the record strings)
local jobs = {}
local with_deps = false
local i = 4
for j = 1, tonumber(ARGV[3]) do
  local nd = tonumber(ARGV[i + 7])
  local nf = tonumber(ARGV[i + 8 + nd])
  local deps = {}
  for d = 1, nd do deps[d] = ARGV[i + 7 + d] end
  if nd > 0 then with_deps = true end
  jobs[j] = { id = ARGV[i], q = ARGV[i + 1], task = ARGV[i + 2], prio_s = ARGV[i + 3],
              prio = tonumber(ARGV[i + 3]), created = ARGV[i + 4], sched = ARGV[i + 5], key = ARGV[i + 6], deps = deps,
              f0 = i + 9 + nd, f1 = i + 8 + nd + nf }
  i = i + 9 + nd + nf
end

-- Without dependencies nothing can fail, so a job's existence is tested by the directory write
-- itself (HSETNX). With dependencies, a first pass finds the existing jobs and validates the
-- parents of the others before anything is written.
local seen_keys, seen_ids = {}, {}
if with_deps then
  for j, job in ipairs(jobs) do
    local existing = nil
    if job.key ~= '' then existing = seen_keys[job.key] or redis.call('HGET', IDEM, job.key) end
    if not existing and (seen_ids[job.id] or redis.call('HEXISTS', JQ, job.id) == 1) then existing = job.id end
    job.existing = existing
    if not existing then
      for d, parent in ipairs(job.deps) do
        if not seen_ids[parent] and redis.call('HEXISTS', JQ, parent) == 0 then
          return { '!', j - 1, d - 1, parent }
        end
      end
      seen_ids[job.id] = true
      if job.key ~= '' then seen_keys[job.key] = job.id end
    end
  end
end

-- one HSET of rec, the given pairs and the caller's record strings (ARGV[job.f0..job.f1])
local function hset_record(key, rec, job, ...)
  local extra = { ... }
  for n = 1, #extra do rec[#rec + 1] = extra[n] end
  for n = job.f0, job.f1 do rec[#rec + 1] = ARGV[n] end
  redis.call('HSET', key, unpack(rec))
end

local out = {}
local known_q = {}
for j, job in ipairs(jobs) do
  local q, id = job.q, job.id
  local existing = job.existing
  if with_deps then
    if not existing then redis.call('HSET', JQ, id, q) end
  else
    if job.key ~= '' then existing = redis.call('HGET', IDEM, job.key) end
    if not existing and redis.call('HSETNX', JQ, id, q) == 0 then existing = id end
  end
  if existing then
    out[j] = '=' .. cjson.encode(hobj(jkey(redis.call('HGET', JQ, existing), existing)))
  else
    local key = jkey(q, id)
    -- the record: these fields, then the status fields, then the caller's other fields
    local rec = { 'id', id, 'task', job.task, 'queue', q, 'created_at', job.created, 'revision', 1 }
    if job.prio ~= 0 then rec[#rec + 1] = 'priority'; rec[#rec + 1] = job.prio_s end
    if job.key ~= '' then rec[#rec + 1] = 'idempotency_key'; rec[#rec + 1] = job.key end
    if not known_q[q] then
      redis.call('SADD', gk('queues'), q)
      known_q[q] = true
    end
    redis.call('ZADD', qk(q, 'i'), 0, id)
    redis.call('ZADD', gk('t:' .. job.task), 0, id)
    if job.key ~= '' then redis.call('HSET', IDEM, job.key, id) end
    -- dependencies
    local failed_parent, failed_status = nil, nil
    local pending = 0
    for _, parent in ipairs(job.deps) do
      local pq = redis.call('HGET', JQ, parent)
      local pst = redis.call('HGET', jkey(pq, parent), 'status')
      if pst == 'failed' or pst == 'cancelled' or pst == 'expired' then
        if not failed_parent then failed_parent, failed_status = parent, pst end
      elseif pst ~= 'succeeded' then
        pending = pending + redis.call('SADD', qk(pq, 'c:' .. parent), id)
        redis.call('HSET', jkey(pq, parent), '_hc', '1')
      end
    end
    if failed_parent then
      for _, parent in ipairs(job.deps) do
        local pq = redis.call('HGET', JQ, parent)
        redis.call('SREM', qk(pq, 'c:' .. parent), id)
      end
      local err = cjson.encode({ type = 'DependencyFailed',
                                 message = 'parent ' .. failed_parent .. ' ended ' .. failed_status })
      rec[10] = 0  -- revision: make_terminal makes it 1
      redis.call('HSET', key, 'status', 'waiting', unpack(rec))
      if job.f1 >= job.f0 then redis.call('HSET', key, unpack(ARGV, job.f0, job.f1)) end
      set_status(q, id, nil, 'waiting')
      make_terminal(q, id, key, 'waiting', 'cancelled', now, err)  -- revision 0 + 1
      out[j] = err
    elseif pending > 0 then
      hset_record(key, rec, job, 'status', 'waiting', '_np', pending)
      set_status(q, id, nil, 'waiting')
      out[j] = 'waiting'
    elseif job.sched ~= '' then
      hset_record(key, rec, job, 'status', 'scheduled')
      redis.call('ZADD', qk(q, 'sched'), ims(ms(tonumber(job.sched))), id)
      set_status(q, id, nil, 'scheduled')
      wake(q, 1)  -- a waiting worker claims (nothing yet), and its next wait knows this due time
      out[j] = 'scheduled'
    else
      local ord = ms(tonumber(job.created))
      hset_record(key, rec, job, 'status', 'queued', '_ra', job.created, '_ord', ims(ord))
      redis.call('ZADD', qk(q, 'ready'), ims((9 - job.prio) * 1e13 + ord), id)
      set_status(q, id, nil, 'queued')
      wake(q, 1)
      out[j] = 'queued'
    end
  end
end
if PROP[1] then propagate(now) end
if next(WAKE) then flush_wake() end
return out
