--[[ enqueue.lua: store jobs atomically (idempotency keys, dependencies, ready/scheduled indexes).

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] now, [3] JSON list of jobs, each
      [id, queue, task, priority, scheduled ('1' = not before scheduled_at), idempotency key ('' = none),
       depends_on (list of ids), flat list of record field/value strings (without status/revision,
       which are set here)].
Touches: {P}:q/Q/j:<id>, {P}:q/Q/ready|sched|done|i|s:*|c:<parent>|wake, {P}:jq|queues|i|s:*|t:<task>|idem|wh.
Returns JSON: {"ok": per job [1, status, error JSON or ''] or, for an existing job, [0, record]}
         or {"unknown_parent": [job index, parent index (0-based), parent id]} with no write.
]]
local now = tonumber(ARGV[2])
local input = cjson.decode(ARGV[3])
local IDEM = gk('idem')

-- pass 1: parse, and validate parents of the jobs that will be created (no writes yet)
local jobs = {}
local seen_keys, seen_ids = {}, {}
for j, a in ipairs(input) do
  local job = { id = a[1], q = a[2], task = a[3], prio = tonumber(a[4]), sched = a[5] == '1', key = a[6],
                deps = a[7], fields = a[8] }
  local existing = nil
  if job.key ~= '' then existing = seen_keys[job.key] or redis.call('HGET', IDEM, job.key) end
  if not existing and (seen_ids[job.id] or redis.call('HEXISTS', JQ, job.id) == 1) then existing = job.id end
  job.existing = existing
  if not existing then
    for i, parent in ipairs(job.deps) do
      if not seen_ids[parent] and redis.call('HEXISTS', JQ, parent) == 0 then
        return cjson.encode({ unknown_parent = { j - 1, i - 1, parent } })
      end
    end
    seen_ids[job.id] = true
    if job.key ~= '' then seen_keys[job.key] = job.id end
  end
  jobs[j] = job
end

-- pass 2: write
local out = {}
for j, job in ipairs(jobs) do
  if job.existing then
    local q = redis.call('HGET', JQ, job.existing)
    out[j] = { 0, hobj(jkey(q, job.existing)) }
  else
    local q, id = job.q, job.id
    local key = jkey(q, id)
    redis.call('HSET', key, 'revision', 1, unpack(job.fields))
    redis.call('HSET', JQ, id, q)
    redis.call('SADD', gk('queues'), q)
    redis.call('ZADD', gk('i'), 0, id)
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
    local status, err = nil, ''
    if failed_parent then
      for _, parent in ipairs(job.deps) do
        local pq = redis.call('HGET', JQ, parent)
        redis.call('SREM', qk(pq, 'c:' .. parent), id)
      end
      err = cjson.encode({ type = 'DependencyFailed',
                           message = 'parent ' .. failed_parent .. ' ended ' .. failed_status })
      redis.call('HSET', key, 'status', 'waiting')
      set_status(q, id, nil, 'waiting')
      make_terminal(q, id, key, 'waiting', 'cancelled', now, err)
      redis.call('HSET', key, 'revision', 1)
      status = 'cancelled'
    elseif pending > 0 then
      redis.call('HSET', key, 'status', 'waiting', '_np', pending)
      set_status(q, id, nil, 'waiting')
      status = 'waiting'
    elseif job.sched then
      local at = tonumber(redis.call('HGET', key, 'scheduled_at')) or now
      redis.call('HSET', key, 'status', 'scheduled')
      redis.call('ZADD', qk(q, 'sched'), ims(ms(at)), id)
      set_status(q, id, nil, 'scheduled')
      status = 'scheduled'
    else
      local ra = tonumber(redis.call('HGET', key, 'created_at')) or now
      local ord = ms(ra)
      redis.call('HSET', key, 'status', 'queued', '_ra', fmt(ra), '_ord', ims(ord))
      redis.call('ZADD', qk(q, 'ready'), ims((9 - job.prio) * 1e13 + ord), id)
      set_status(q, id, nil, 'queued')
      wake(q, 1)
      status = 'queued'
    end
    out[j] = { 1, status, err }
  end
end
propagate(now)
flush_wake()
return cjson.encode({ ok = out })
