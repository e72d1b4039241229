--[[ claim.lua: lease up to `limit` ready jobs of the unpaused queues, 9 -> 0 priority, then oldest.

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] now ('' = the server's TIME), [3] limit, [4] worker id, [5] token base (random), [6..] queue names.
Touches per queue Q: {P}:q/Q/cfg (read), {P}:q/Q/sched -> {P}:q/Q/ready (due jobs promoted first),
  {P}:q/Q/ready -> {P}:q/Q/lease, {P}:q/Q/j:<id>, {P}:q/Q/s:queued -> {P}:q/Q/s:running; ready jobs
  past the retention are expired instead ({P}:q/Q/done|s:*, {P}:wh, dependents cancelled).
Global limits: a job with a limit_key is leased only while {P}:lr:<key> (running ids) has fewer
  than concurrency_limit members and {P}:ls:<key> (starts within the last rate_per seconds) fewer
  than rate_count; otherwise it stays in {P}:q/Q/ready and the scan goes on past it (in pages
  that grow 4x a round, at most SCAN_BUDGET entries per call; an entry of a key already found full
  costs one HGET), so the jobs behind it are still leased. A lease adds the job to
  {P}:lr:<key> and its start to {P}:ls:<key> (at the server's TIME when that is later than now),
  and opens a timeline entry (attempts).
A call that leases jobs records them in {P}:lc:<token base> ('id token id token ...') for as long as
  their leases, in case its reply is lost. A call that finds that record ran already (the client
  sent it again after the connection dropped before its reply): it returns those jobs still
  leased under their tokens, and leases no more.
Returns: {JSON list of the leased job records (status running, new lease_token '<base>.<n>/<queue>',
  lease_expires_at = now + visibility_timeout, deliveries + 1, started_at = now, worker_id),
  when a rate-limited job left queued may start ('' = none),
  when the first scheduled job of these queues comes due ('' = none: the next wait needs no read)}.
]]
local clock = redis.call('TIME')
local server_now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
-- '': sent ahead of a blocking wait (wait_and_claim), so the server's clock
local now = tonumber(ARGV[2]) or server_now
-- Rate windows count a start from when it happened: a claim can run after its `now` (redis-py
-- sends it again after a dropped connection with the arguments of its first send, 0.7 s old
-- after three retries), and starts stamped then would leave the window that much too soon.
local rate_now = math.max(now, server_now)
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
-- this claim ran already and its reply was lost (redis-py sends a call again on a new connection):
-- reply with what it leased, or those jobs wait out their leases with no worker running them
local sent = redis.call('GET', gk('lc:' .. base))
if sent then
  for id, token in string.gmatch(sent, '(%S+) (%S+)') do
    local h = hobj(jkey(token_queue(id, token), id))
    if h and h.status == 'running' and h.lease_token == token then out[#out + 1] = h end
  end
end
local serial = 0
local SCAN_BUDGET = 10000  -- entries one call may look at; one of a key known full costs about 1 µs
local budget = SCAN_BUDGET
local skipped = {}  -- queue -> ready entries left in place ahead of the scan (limited, blocked)
local full = {}     -- limit key -> true once it can take no more jobs in this call
local retry_at = nil
local longest_vt = 0  -- of the queues leased from: how long the lost-reply record is of use

local function admit(lk, conc, rc, rp)
  if full[lk] then return false end
  if conc and redis.call('SCARD', gk('lr:' .. lk)) >= conc then
    full[lk] = true
    return false
  end
  if rc then
    local sk = gk('ls:' .. lk)
    redis.call('ZREMRANGEBYSCORE', sk, '-inf', ims(ms(rate_now - rp)))
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

local page = 16  -- entries read per queue in a round that looks past blocked ones; grows 4x a round
while not sent do
  local want = limit - #out
  if want <= 0 or #queues == 0 or budget <= 0 then break end
  local cands = {}
  -- one queue with nothing left in place ahead: pop the candidates (they all get examined; the
  -- ones a limit keeps waiting go back with their score), else read a page past the blocked ones
  -- and remove the leased ones one by one
  local popped = #queues == 1 and not skipped[queues[1]]
  local n = popped and want or math.min(math.max(want, page), budget)
  local horizon = nil  -- merged order is exact only up to the lowest last entry of a full page
  for _, q in ipairs(queues) do
    local r
    if popped then
      r = redis.call('ZPOPMIN', qk(q, 'ready'), n)
    else
      local off = skipped[q] or 0
      r = redis.call('ZRANGE', qk(q, 'ready'), off, off + n - 1, 'WITHSCORES')
      if #r == 2 * n then
        local last = { tonumber(r[#r]), r[#r - 1] }
        if not horizon or last[1] < horizon[1] or (last[1] == horizon[1] and last[2] < horizon[2]) then
          horizon = last
        end
      end
    end
    for i = 1, #r, 2 do cands[#cands + 1] = { tonumber(r[i + 1]), r[i], q, r[i + 1] } end
  end
  if not popped then page = math.min(page * 4, 4096) end
  if #cands == 0 then break end
  if #queues > 1 then
    table.sort(cands, function(a, b)
      if a[1] ~= b[1] then return a[1] < b[1] end
      return a[2] < b[2]
    end)
  end
  local again = false
  local taken = {}  -- queue -> ids leased in this round; their index moves are written per queue
  local back = {}   -- popped entries that stay queued: score, id, ...
  for i = 1, #cands do
    local id, q = cands[i][2], cands[i][3]
    if #out >= limit and not popped then break end
    if horizon and (cands[i][1] > horizon[1] or (cands[i][1] == horizon[1] and id > horizon[2])) then
      again = true
      break  -- past a page's end: the next round reads on from there
    end
    local key = jkey(q, id)
    local c = cfg(q)
    budget = budget - 1
    local known = next(full) and redis.call('HGET', key, 'limit_key')  -- only once a key is full
    local h = (known and full[known]) and { status = 'queued', limit_key = known } or hobj(key) or {}
    local lk = h.limit_key
    if h.status ~= 'queued' then
      if not popped then redis.call('ZREM', qk(q, 'ready'), id) end  -- stale index entry; drop it
      again = true
    elseif known and full[known] then  -- a key found full in this call: look past it without reading the record
      skipped[q] = (skipped[q] or 0) + 1
      if popped then back[#back + 1] = cands[i][4]; back[#back + 1] = id end
      again = true
    elseif (tonumber(h._ra) or now) + c.retention < now then
      make_terminal(q, id, key, 'queued', 'expired', now, nil,
        { h.revision or false, h.webhook or false, h._hc or false, h.lease_token or false, lk or false })
      again = true
    elseif lk and not admit(lk, tonumber(h.concurrency_limit), tonumber(h.rate_count), tonumber(h.rate_per)) then
      skipped[q] = (skipped[q] or 0) + 1  -- stays queued, in place; look past it
      if popped then back[#back + 1] = cands[i][4]; back[#back + 1] = id end
      again = true
    else
      serial = serial + 1
      local exp = now + c.vt
      if c.vt > longest_vt then longest_vt = c.vt end
      h.status, h.lease_token, h.lease_expires_at = 'running', base .. '.' .. serial .. '/' .. q, fmt(exp)
      h.started_at, h.worker_id, h.updated_at = fmt(now), worker, fmt(now)
      h.deliveries = ims((tonumber(h.deliveries) or 0) + 1)
      h.revision = ims((tonumber(h.revision) or 0) + 1)
      h.attempts = attempt_started(h.attempts, h.attempt, worker, now)
      redis.call('HSET', key, 'status', 'running', 'lease_token', h.lease_token, 'lease_expires_at',
        h.lease_expires_at, 'started_at', h.started_at, 'worker_id', worker, 'updated_at', h.updated_at,
        'deliveries', h.deliveries, 'revision', h.revision, 'attempts', h.attempts)
      local t = taken[q]
      if not t then
        t = { ids = {}, lease = {} }
        taken[q] = t
      end
      t.ids[#t.ids + 1] = id
      t.lease[#t.lease + 1] = ims(ms(exp))
      t.lease[#t.lease + 1] = id
      if lk then
        redis.call('SADD', gk('lr:' .. lk), id)
        local rp = tonumber(h.rate_per)
        if h.rate_count and rp then
          local sk = gk('ls:' .. lk)
          redis.call('ZADD', sk, ims(ms(rate_now)), id .. ':' .. ims(ms(rate_now)))
          redis.call('PEXPIRE', sk, ims(rp * 1000 + 1000))
        end
      end
      out[#out + 1] = h
    end
  end
  -- ready -> lease and s:queued -> s:running, one call per index and queue
  for q, t in pairs(taken) do
    local zs = {}
    for n, id in ipairs(t.ids) do zs[2 * n - 1] = 0; zs[2 * n] = id end
    if not popped then call_with('ZREM', qk(q, 'ready'), t.ids) end
    call_with('ZADD', qk(q, 'lease'), t.lease)
    call_with('ZREM', qk(q, 's:queued'), t.ids)
    call_with('ZADD', qk(q, 's:running'), zs)
  end
  if back[1] then call_with('ZADD', qk(queues[1], 'ready'), back) end
  if not again then break end
end
if out[1] and not sent then
  -- what this claim leased, under its token base: should its reply be lost (the connection
  -- dropped), the worker hands these back at its next claim instead of leaving them to their
  -- leases (backend._hand_back_lost); once the leases ended, the sweep does it anyway
  local leased = {}
  for n, h in ipairs(out) do leased[2 * n - 1] = h.id; leased[2 * n] = h.lease_token end
  redis.call('SET', gk('lc:' .. base), table.concat(leased, ' '), 'PX', ims(longest_vt * 1000))
end
if PROP[1] then propagate(now) end
if next(WAKE) then flush_wake() end
local due = nil
for _, q in ipairs(queues) do
  local head = redis.call('ZRANGE', qk(q, 'sched'), 0, 0, 'WITHSCORES')[2]
  if head and (not due or tonumber(head) < due) then due = tonumber(head) end
end
return { jlist(out), retry_at and fmt(retry_at) or '', due and fmt(due / 1000) or '' }
