--[[ sweep.lua: housekeeping in bounded batches.

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] now, [3] limit (per category), [4] worker TTL seconds.
Touches: {P}:queues (read); per queue {P}:q/Q/lease (expired leases -> queued, or failed with
  DeliveryLimitExceeded once deliveries >= max_deliveries), {P}:q/Q/ready|sched (jobs ready longer
  than the retention -> expired), {P}:q/Q/done (records finished before now - result_ttl are
  deleted with every index entry, except while their webhook is owed in {P}:wh),
  {P}:q/Q/j:<id>|s:*|i|c:*|wake; {P}:t:*|jq|idem|wh|wha; {P}:wseen and {P}:workers (workers
  silent for longer than the TTL are dropped).
  Each lost lease closes its timeline entry as 'lost' and frees its limit key's slot; a lost lease
  of a job whose cancel was requested ends 'cancelled' instead (timeline entry 'cancelled'; its
  dependents are cancelled and its webhook is owed like any cancelled job's; not counted).
Returns: {requeued, dead, expired, deleted, workers_dropped}.
]]
local now = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local now_ms = ms(now)
local requeued, dead, expired, deleted, dropped = 0, 0, 0, 0, 0
local stopped = 0  -- lost leases of jobs a user cancelled: ended cancelled (no SweepReport field)
local LEASE_LOST = cjson.encode({ type = 'LeaseExpired', message = 'the worker stopped renewing its lease' })
local CANCELLED_LOST = cjson.encode({ type = 'Cancelled', message = 'cancelled while its worker was lost',
  traceback = cjson.null })
local queues = redis.call('SMEMBERS', gk('queues'))

for _, q in ipairs(queues) do
  local c = cfg(q)
  -- expired leases
  if requeued + dead + stopped < limit then
    local ids = redis.call('ZRANGEBYSCORE', qk(q, 'lease'), '-inf', '(' .. ims(now_ms), 'LIMIT', 0,
      limit - requeued - dead - stopped)
    for _, id in ipairs(ids) do
      local key = jkey(q, id)
      local v = redis.call('HMGET', key, 'status', 'deliveries', 'lease_expires_at', 'cancel_requested')
      if v[1] ~= 'running' then
        redis.call('ZREM', qk(q, 'lease'), id)
      elseif (tonumber(v[3]) or 0) < now and v[4] == '1' then
        -- cancellation is stored: a cancelled job whose worker died is not run again
        end_attempt(key, now, 'cancelled', CANCELLED_LOST)
        make_terminal(q, id, key, 'running', 'cancelled', now, CANCELLED_LOST)
        stopped = stopped + 1
      elseif (tonumber(v[3]) or 0) < now then
        end_attempt(key, now, 'lost', LEASE_LOST)
        local d = tonumber(v[2]) or 0
        if d >= c.md then
          make_terminal(q, id, key, 'running', 'failed', now, cjson.encode({ type = 'DeliveryLimitExceeded',
            message = 'delivered ' .. d .. ' times without finishing (lease expired; max_deliveries ' .. c.md .. ')', traceback = cjson.null }))
          dead = dead + 1
        else
          make_ready(q, id, key, 'running', now, nil)
          requeued = requeued + 1
        end
      end
    end
  end
  -- retention: ready jobs (per priority band) and overdue scheduled jobs
  local cutoff = now - c.retention
  local cut_ms = ms(cutoff)
  -- A job put back keeps its place (its old order) but its retention restarts: such jobs at the
  -- head of a band are looked past (up to 10 batches of them), not taken for the band's end.
  for p = 9, 0, -1 do
    if expired >= limit then break end
    local lo = (9 - p) * 1e13
    local kept = 0
    while expired < limit and kept < 10 * limit do
      local want = limit - expired
      local ids = redis.call('ZRANGEBYSCORE', qk(q, 'ready'), ims(lo), '(' .. ims(lo + cut_ms), 'LIMIT', kept, want)
      for _, id in ipairs(ids) do
        local key = jkey(q, id)
        local v = redis.call('HMGET', key, 'status', '_ra')
        if v[1] ~= 'queued' then
          redis.call('ZREM', qk(q, 'ready'), id)
        elseif (tonumber(v[2]) or now) < cutoff then
          make_terminal(q, id, key, 'queued', 'expired', now, nil)
          expired = expired + 1
        else
          kept = kept + 1
        end
      end
      if #ids < want then break end
    end
  end
  if expired < limit then
    local ids = redis.call('ZRANGEBYSCORE', qk(q, 'sched'), '-inf', '(' .. ims(cut_ms), 'LIMIT', 0,
      limit - expired)
    for _, id in ipairs(ids) do
      local key = jkey(q, id)
      local st = redis.call('HGET', key, 'status')
      if st == 'scheduled' or st == 'retrying' then
        make_terminal(q, id, key, st, 'expired', now, nil)
        expired = expired + 1
      else
        redis.call('ZREM', qk(q, 'sched'), id)
      end
    end
  end
  -- result_ttl
  if deleted < limit then
    local ids = redis.call('ZRANGEBYSCORE', qk(q, 'done'), '-inf', '(' .. ims(ms(now - c.ttl)), 'LIMIT', 0,
      limit - deleted)
    for _, id in ipairs(ids) do
      if redis.call('ZSCORE', gk('wh'), id) then
        -- its webhook is still owed: the record stays for the outbox; looked at again a result_ttl on
        redis.call('ZADD', qk(q, 'done'), ims(now_ms), id)
      else
        delete_job(q, id, jkey(q, id))
        deleted = deleted + 1
      end
    end
  end
end
propagate(now)
flush_wake()

local gone = redis.call('ZRANGEBYSCORE', gk('wseen'), '-inf', '(' .. fmt(now - ttl), 'LIMIT', 0, limit)
for _, w in ipairs(gone) do
  redis.call('ZREM', gk('wseen'), w)
  redis.call('HDEL', gk('workers'), w)
  dropped = dropped + 1
end
return { requeued, dead, expired, deleted, dropped }
