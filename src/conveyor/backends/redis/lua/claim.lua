--[[ claim.lua: lease up to `limit` ready jobs of the unpaused queues, 9 -> 0 priority, then oldest.

KEYS: none (keys are built from the prefix; see _common.lua).
ARGV: [1] prefix P, [2] now, [3] limit, [4] worker id, [5] token base (random), [6..] queue names.
Touches per queue Q: {P:Q}:cfg (read), {P:Q}:sched -> {P:Q}:ready (due jobs promoted first),
  {P:Q}:ready -> {P:Q}:lease, {P:Q}:j:<id>, {P:Q}:s:*, {P}:s:*; ready jobs past the retention are
  expired instead ({P:Q}:done, {P}:wh, dependents cancelled).
Returns: a JSON list of the leased job records (status running, new lease_token,
  lease_expires_at = now + visibility_timeout, deliveries + 1, started_at = now, worker_id).
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
for _ = 1, 20 do
  local want = limit - #out
  if want <= 0 or #queues == 0 then break end
  local cands = {}
  for _, q in ipairs(queues) do
    local r = redis.call('ZRANGE', qk(q, 'ready'), 0, want - 1, 'WITHSCORES')
    for i = 1, #r, 2 do cands[#cands + 1] = { tonumber(r[i + 1]), r[i], q } end
  end
  if #cands == 0 then break end
  if #queues > 1 then
    table.sort(cands, function(a, b)
      if a[1] ~= b[1] then return a[1] < b[1] end
      return a[2] < b[2]
    end)
  end
  local expired = 0
  for i = 1, math.min(want, #cands) do
    local id, q = cands[i][2], cands[i][3]
    local key = jkey(q, id)
    local c = cfg(q)
    redis.call('ZREM', qk(q, 'ready'), id)
    local v = redis.call('HMGET', key, 'status', '_ra', 'deliveries', 'revision')
    if v[1] ~= 'queued' then
      -- stale index entry; drop it
    elseif (tonumber(v[2]) or now) + c.retention < now then
      make_terminal(q, id, key, 'queued', 'expired', now, nil)
      expired = expired + 1
    else
      serial = serial + 1
      local token = base .. '.' .. serial
      local exp = now + c.vt
      redis.call('HSET', key, 'status', 'running', 'lease_token', token, 'lease_expires_at', fmt(exp),
        'started_at', fmt(now), 'worker_id', worker, 'updated_at', fmt(now),
        'deliveries', (tonumber(v[3]) or 0) + 1, 'revision', (tonumber(v[4]) or 0) + 1)
      redis.call('ZADD', qk(q, 'lease'), ims(ms(exp)), id)
      set_status(q, id, 'queued', 'running')
      out[#out + 1] = hobj(key)
    end
  end
  if expired == 0 then break end
end
propagate(now)
flush_wake()
return jlist(out)
