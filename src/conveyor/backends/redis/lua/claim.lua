--[[ claim.lua: lease up to `limit` ready jobs of the unpaused queues, 9 -> 0 priority, then oldest.

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] now, [3] limit, [4] worker id, [5] token base (random), [6..] queue names.
Touches per queue Q: {P}:q/Q/cfg (read), {P}:q/Q/sched -> {P}:q/Q/ready (due jobs promoted first),
  {P}:q/Q/ready -> {P}:q/Q/lease, {P}:q/Q/j:<id>, {P}:q/Q/s:*, {P}:s:*; ready jobs past the retention are
  expired instead ({P}:q/Q/done, {P}:wh, dependents cancelled).
Global limits: a job with a limit_key is leased only while {P}:lr:<key> (running ids) has fewer
  than concurrency_limit members and {P}:ls:<key> (starts within the last rate_per seconds) fewer
  than rate_count; otherwise it stays in {P}:q/Q/ready and the scan goes on past it (at most
  SCAN_BUDGET entries per call), so the jobs behind it are still leased. A lease adds the job to
  {P}:lr:<key> and its start to {P}:ls:<key>, and opens a timeline entry (attempts).
Returns: {JSON list of the leased job records (status running, new lease_token,
  lease_expires_at = now + visibility_timeout, deliveries + 1, started_at = now, worker_id),
  when a rate-limited job left queued may start ('' = none)}.
]]
local now = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local worker = ARGV[4]
local base = ARGV[5]
local queues = {}
for i = 6, #ARGV do
  local q = ARGV[i]
  if not cfg(q).paused then
    queues[#queues + 1] = q
    promote(q, now, 1000)
  end
end
WAKE = {}

local out = {}
local serial = 0
local SCAN_BUDGET = 1000
local budget = SCAN_BUDGET
local skipped = {}  -- queue -> ready entries left in place ahead of the scan (limited, blocked)
local full = {}     -- limit key -> true once it can take no more jobs in this call
local retry_at = nil

local function admit(lk, conc, rc, rp)
  if full[lk] then return false end
  if conc and redis.call('SCARD', gk('lr:' .. lk)) >= conc then
    full[lk] = true
    return false
  end
  if rc then
    local sk = gk('ls:' .. lk)
    redis.call('ZREMRANGEBYSCORE', sk, '-inf', ims(ms(now - rp)))
    if redis.call('ZCARD', sk) >= rc then
      full[lk] = true
      local oldest = redis.call('ZRANGE', sk, 0, 0, 'WITHSCORES')
      local at = tonumber(oldest[2]) / 1000 + rp
      if not retry_at or at < retry_at then retry_at = at end
      return false
    end
  end
  return true
end

for _ = 1, 20 do
  local want = limit - #out
  if want <= 0 or #queues == 0 or budget <= 0 then break end
  local cands = {}
  for _, q in ipairs(queues) do
    local off = skipped[q] or 0
    local r = redis.call('ZRANGE', qk(q, 'ready'), off, off + want - 1, 'WITHSCORES')
    for i = 1, #r, 2 do cands[#cands + 1] = { tonumber(r[i + 1]), r[i], q } end
  end
  if #cands == 0 then break end
  if #queues > 1 then
    table.sort(cands, function(a, b)
      if a[1] ~= b[1] then return a[1] < b[1] end
      return a[2] < b[2]
    end)
  end
  local again = false
  for i = 1, math.min(want, #cands) do
    local id, q = cands[i][2], cands[i][3]
    local key = jkey(q, id)
    local c = cfg(q)
    budget = budget - 1
    local v = redis.call('HMGET', key, 'status', '_ra', 'deliveries', 'revision', 'limit_key',
      'concurrency_limit', 'rate_count', 'rate_per', 'attempt')
    local lk = v[5]
    if v[1] ~= 'queued' then
      redis.call('ZREM', qk(q, 'ready'), id)  -- stale index entry; drop it
      again = true
    elseif (tonumber(v[2]) or now) + c.retention < now then
      redis.call('ZREM', qk(q, 'ready'), id)
      make_terminal(q, id, key, 'queued', 'expired', now, nil)
      again = true
    elseif lk and not admit(lk, tonumber(v[6]), tonumber(v[7]), tonumber(v[8])) then
      skipped[q] = (skipped[q] or 0) + 1  -- stays queued, in place; look past it
      again = true
    else
      redis.call('ZREM', qk(q, 'ready'), id)
      serial = serial + 1
      local token = base .. '.' .. serial
      local exp = now + c.vt
      redis.call('HSET', key, 'status', 'running', 'lease_token', token, 'lease_expires_at', fmt(exp),
        'started_at', fmt(now), 'worker_id', worker, 'updated_at', fmt(now),
        'deliveries', (tonumber(v[3]) or 0) + 1, 'revision', (tonumber(v[4]) or 0) + 1)
      redis.call('ZADD', qk(q, 'lease'), ims(ms(exp)), id)
      set_status(q, id, 'queued', 'running')
      if lk then
        redis.call('SADD', gk('lr:' .. lk), id)
        local rp = tonumber(v[8])
        if v[7] and rp then
          local sk = gk('ls:' .. lk)
          redis.call('ZADD', sk, ims(ms(now)), id .. ':' .. ims(ms(now)))
          redis.call('PEXPIRE', sk, ims(rp * 1000 + 1000))
        end
      end
      start_attempt(key, v[9], worker, now)
      out[#out + 1] = hobj(key)
    end
  end
  if not again then break end
end
propagate(now)
flush_wake()
return { jlist(out), retry_at and fmt(retry_at) or '' }
