--[[ _common.lua: helpers prepended to every other script at load time (not run on its own).

Every script gets KEYS[1] = {P}:jq and ARGV[1] = the key prefix P, and builds its keys from P (see
backend.py for the full layout). EVERY key of one installation carries the one hash tag {P}, so
on Redis Cluster all of them live in one slot and every script is single-slot; KEYS[1] routes the
call there. Keys of one queue Q are {P}:q/<Q>/<name> (queue names never contain '/'); app-wide
keys are {P}:<name>:
  {P}:q/Q/j:<id>    hash   the job record (JSON fields args/kwargs/progress/result/error/metadata/
                           depends_on; internal _ra = when it last became ready, _ord = ready order
                           in ms, _np = parents not yet succeeded). Fields at their default are
                           absent (see backend.py); a finished job's lease_token and
                           lease_expires_at are '' (read as none). Lease tokens are
                           '<random>.<n>/<queue>' (see token_queue).
  {P}:q/Q/ready     zset   queued jobs, score (9 - priority) * 1e13 + _ord
  {P}:q/Q/sched     zset   scheduled/retrying jobs, score scheduled_at ms
  {P}:q/Q/lease     zset   running jobs, score lease_expires_at ms
  {P}:q/Q/done      zset   terminal jobs, score finished_at ms (result_ttl)
  {P}:q/Q/i         zset   every job of Q, score 0, member id (lex order = time order)
  {P}:q/Q/s:<st>    zset   jobs of Q in <st>, score 0 (lex index and count)
  {P}:q/Q/c:<id>    set    waiting children of job <id>
  {P}:q/Q/cfg       hash   queue settings
  {P}:q/Q/wake      list   wake-up tokens for BLPOP (trimmed to 64 once longer than 96)
  {P}:jq            hash   job id -> queue name
  {P}:queues        set    known queue names
  {P}:t:<task>      zset   every job of <task>, score 0 (lex index)
  {P}:idem          hash   idempotency key -> job id
  {P}:wh            zset   webhook outbox, score = next attempt ms;  {P}:wha hash id -> attempts
  {P}:workers       hash   worker id -> JSON;  {P}:wseen zset worker id by last heartbeat
  {P}:lr:<key>      set    ids of the running jobs of limit key <key> (added by claim, removed by
                           limit_release whenever a job leaves 'running': finish, sweep, hand-back)
  {P}:ls:<key>      zset   starts of limit key <key> in its rate window (a sliding log: score = start
                           ms, member = '<id>:<ms>'; pruned by claim, expires once the window passed)
  {P}:lc:<base>     string what the claim with token base <base> leased, 'id token id token ...'; expires
                           with the leases (read only when that claim's reply was lost)
Job records also hold limit_key, concurrency_limit, rate_count, rate_per (the job's limits) and
attempts (the timeline: a JSON array of the last 50 deliveries, see attempt_started/attempt_ended).
There is no app-wide index of all jobs or of a status: a listing of every job, or of one status,
merges the per-queue indexes ({P}:q/Q/i, {P}:q/Q/s:<st>) of the queues in {P}:queues (see
list.lua), so a job costs one index write per status change, not two.
Times are epoch seconds in ARGV and in records (formatted %.17g), milliseconds in scores.
The Python side prepends DEF_* constants (QueueSettings defaults) before this file.
]]
local P = ARGV[1]
local function gk(s) return '{' .. P .. '}:' .. s end
local QP = '{' .. P .. '}:q/'
local function qk(q, s) return QP .. q .. '/' .. s end
local function jkey(q, id) return QP .. q .. '/j:' .. id end
local JQ = gk('jq')

-- string.format costs ≈ 0.3–0.5 µs here, and a script formats the same few times (now, a lease
-- expiry, a score) for every job it touches: each distinct value is formatted once per call
local FMT = {}
local function fmt(x)
  local s = FMT[x]
  if not s then s = string.format('%.17g', x); FMT[x] = s end
  return s
end
local function ms(x) return math.floor(x * 1000) end
local IMS = {}
local function ims(x)  -- an integer score as a string
  local s = IMS[x]
  if not s then s = string.format('%.0f', x); IMS[x] = s end
  return s
end

local CFG = {}
local function cfg(q)
  local c = CFG[q]
  if c then return c end
  local v = redis.call('HMGET', qk(q, 'cfg'), 'retention', 'visibility_timeout', 'max_deliveries',
    'result_ttl', 'paused')
  c = { retention = tonumber(v[1]) or DEF_RETENTION, vt = tonumber(v[2]) or DEF_VT,
        md = tonumber(v[3]) or DEF_MD, ttl = tonumber(v[4]) or DEF_TTL, paused = v[5] == '1' }
  CFG[q] = c
  return c
end

-- redis.call(op, k, every element of list): unpack() fails past ≈ 8,000 values, so in slices
local function call_with(op, k, list)
  for i = 1, #list, 4000 do redis.call(op, k, unpack(list, i, math.min(i + 3999, #list))) end
end

-- make_terminal's sorted-set writes: redis.call, unless the script batches them (finish.lua)
local zwrite = redis.call

-- move id between its queue's status indexes (old may be nil for a new job)
local function set_status(q, id, old, new)
  if old then redis.call('ZREM', qk(q, 's:' .. old), id) end
  redis.call('ZADD', qk(q, 's:' .. new), 0, id)
end

local WAKE = {}
local function wake(q, n) WAKE[q] = (WAKE[q] or 0) + n end

-- a job leaves 'running': its limit key's slot is free again (and a waiting worker may use it).
-- lk: the job's limit_key when the caller read it already (false = none), nil = read it here.
local function limit_release(q, id, key, lk)
  if lk == nil then lk = redis.call('HGET', key, 'limit_key') end
  if lk and redis.call('SREM', gk('lr:' .. lk), id) == 1 then wake(q, 1) end
end

-- the timeline: a JSON array of deliveries. Encoded by hand so that times keep full precision
-- (cjson would round them to 14 digits).
local function nn(v) if v == nil or v == cjson.null then return nil end return v end
local function attempts_json(list)
  local parts = {}
  for i, e in ipairs(list) do
    local fin, err, at = nn(e.finished_at), nn(e.error), nn(e.attempt)
    parts[i] = '{"attempt":' .. (at and string.format('%d', at) or 'null') ..
      ',"worker_id":' .. cjson.encode(e.worker_id) .. ',"started_at":' .. fmt(e.started_at) ..
      ',"finished_at":' .. (fin and fmt(fin) or 'null') .. ',"status":' .. cjson.encode(e.status) ..
      ',"error":' .. (err and cjson.encode(err) or 'null') .. '}'
  end
  return '[' .. table.concat(parts, ',') .. ']'
end

-- the timeline raw (stored JSON or nil/false) with a new running entry, as JSON
local FIRST, FIRST_AT = {}, nil  -- first-delivery timelines built at FIRST_AT: worker -> attempt -> JSON
local function attempt_started(raw, attempt, worker, now)
  if not raw or raw == '[]' then  -- a first delivery: what attempts_json writes for one entry
    if FIRST_AT ~= now then FIRST, FIRST_AT = {}, now end
    local by = FIRST[worker]
    if not by then by = {}; FIRST[worker] = by end
    local a = tonumber(attempt) or 1
    local json = by[a]
    if not json then  -- once per claim call, not once per job (≈ 2 µs)
      json = '[{"attempt":' .. string.format('%d', a) .. ',"worker_id":' .. cjson.encode(worker) ..
        ',"started_at":' .. fmt(now) .. ',"finished_at":null,"status":"running","error":null}]'
      by[a] = json
    end
    return json
  end
  local list = cjson.decode(raw)
  list[#list + 1] = { attempt = tonumber(attempt) or 1, worker_id = worker, started_at = now, status = 'running' }
  while #list > 50 do table.remove(list, 1) end
  return attempts_json(list)
end

-- the timeline raw with its running entry closed: label (succeeded, retrying, lost, ...), err a
-- JSON error or nil/''; nil when there is no running entry (nothing to write)
local RUNNING_TAIL = ',"finished_at":null,"status":"running","error":null}]'
local function attempt_ended(raw, now, label, err)
  if not raw or raw == '[]' then return nil end
  if (not err or err == '') and string.sub(raw, -#RUNNING_TAIL) == RUNNING_TAIL then
    -- the last entry is running (as attempts_json wrote it): close it in place, no decoding
    return string.sub(raw, 1, #raw - #RUNNING_TAIL) .. ',"finished_at":' .. fmt(now) ..
      ',"status":' .. cjson.encode(label) .. ',"error":null}]'
  end
  local list = cjson.decode(raw)
  local last = list[#list]
  if last.status ~= 'running' then return nil end
  last.finished_at = now
  last.status = label
  if err and err ~= '' then
    local e = cjson.decode(err)
    last.error = { type = nn(e.type), message = nn(e.message) }
  end
  return attempts_json(list)
end

local function end_attempt(key, now, label, err)
  local json = attempt_ended(redis.call('HGET', key, 'attempts'), now, label, err)
  if json then redis.call('HSET', key, 'attempts', json) end
end

-- push the wake-up tokens owed (at most 64 per queue); the list is trimmed back to 64 tokens only
-- once it grew past 96, so a push is one call, not two, while no worker drains the tokens
local function flush_wake()
  for q, n in pairs(WAKE) do
    if n > 64 then n = 64 end
    local k = qk(q, 'wake')
    local len
    if n == 1 then
      len = redis.call('LPUSH', k, '1')
    else
      local toks = {}
      for i = 1, n do toks[i] = '1' end
      len = redis.call('LPUSH', k, unpack(toks))
    end
    if len > 96 then redis.call('LTRIM', k, 0, 63) end
  end
  WAKE = {}
end

local function ready_score(key, ord)
  local p = tonumber(redis.call('HGET', key, 'priority')) or 0
  return ims((9 - p) * 1e13 + ord)
end

-- status -> queued. ord: ready order in ms (nil = keep the stored one, else now).
local function make_ready(q, id, key, old, now, ord)
  if old == 'running' then limit_release(q, id, key) end
  if not ord then ord = tonumber(redis.call('HGET', key, '_ord')) or ms(now) end
  redis.call('HSET', key, 'status', 'queued', '_ra', fmt(now), '_ord', ims(ord), 'updated_at', fmt(now))
  redis.call('HDEL', key, 'lease_token', 'lease_expires_at')
  redis.call('HINCRBY', key, 'revision', 1)
  redis.call('ZREM', qk(q, 'sched'), id)
  redis.call('ZREM', qk(q, 'lease'), id)
  redis.call('ZADD', qk(q, 'ready'), ready_score(key, ord), id)
  set_status(q, id, old, 'queued')
  wake(q, 1)
end

-- status -> scheduled/retrying at time at (a waiting worker learns when it comes due)
local function make_scheduled(q, id, key, old, new, at, now)
  if old == 'running' then limit_release(q, id, key) end
  redis.call('HSET', key, 'status', new, 'scheduled_at', fmt(at), 'updated_at', fmt(now))
  redis.call('HDEL', key, 'lease_token', 'lease_expires_at')
  redis.call('HINCRBY', key, 'revision', 1)
  redis.call('ZREM', qk(q, 'ready'), id)
  redis.call('ZREM', qk(q, 'lease'), id)
  redis.call('ZADD', qk(q, 'sched'), ims(ms(at)), id)
  set_status(q, id, old, new)
  wake(q, 1)  -- a waiting worker claims, and its next wait knows this due time
end

-- terminal transitions are queued here and their dependents handled by propagate()
local PROP = {}

local FROM = { queued = 'ready', scheduled = 'sched', retrying = 'sched', running = 'lease' }

-- pre: what the caller read of the record already: { revision, webhook, _hc, lease_token,
-- limit_key } (HMGET values, false = missing), nil = read here. extra: more field/value pairs for
-- the record's HSET, nil = none.
-- the queue of job id whose lease token is token: claim writes tokens '<random>.<n>/<queue>' (queue
-- names never contain '/'), so the token names it; an older token (no '/') asks the directory.
-- A token naming the wrong queue finds no record there holding it, like any stale token.
local function token_queue(id, token)
  local at = string.find(token, '/', 1, true)
  if at then return string.sub(token, at + 1) end
  return redis.call('HGET', JQ, id)
end

local function make_terminal(q, id, key, old, new, now, err, pre, extra)
  local v = pre or redis.call('HMGET', key, 'revision', 'webhook', '_hc', 'lease_token', 'limit_key')
  if old == 'running' then limit_release(q, id, key, v[5]) end
  local f = { 'status', new, 'finished_at', fmt(now), 'updated_at', fmt(now), 'revision', (tonumber(v[1]) or 0) + 1 }
  if err then f[#f + 1] = 'error'; f[#f + 1] = err end
  -- a finished job holds no lease: blanked in the same HSET (read back as none), not a second call
  if v[4] and v[4] ~= '' then
    f[#f + 1] = 'lease_token'; f[#f + 1] = ''; f[#f + 1] = 'lease_expires_at'; f[#f + 1] = ''
  end
  if extra then for _, x in ipairs(extra) do f[#f + 1] = x end end
  redis.call('HSET', key, unpack(f))
  if FROM[old] then zwrite('ZREM', qk(q, FROM[old]), id) end
  zwrite('ZADD', qk(q, 'done'), ims(ms(now)), id)
  if old then zwrite('ZREM', qk(q, 's:' .. old), id) end
  zwrite('ZADD', qk(q, 's:' .. new), 0, id)
  if v[2] then
    redis.call('ZADD', gk('wh'), ims(ms(now)), id)
    redis.call('HDEL', gk('wha'), id)
  end
  if v[3] then PROP[#PROP + 1] = { q, id, new } end
end

-- a waiting job whose parents all succeeded becomes scheduled or queued
local function release(q, id, key, now)
  local sa = tonumber(redis.call('HGET', key, 'scheduled_at'))
  if sa and sa > now then
    make_scheduled(q, id, key, 'waiting', 'scheduled', sa, now)
  else
    make_ready(q, id, key, 'waiting', now, ms(now))
  end
end

-- apply the consequences of every terminal transition so far, transitively
local function propagate(now)
  local i = 1
  while PROP[i] do
    local q, id, st = PROP[i][1], PROP[i][2], PROP[i][3]
    i = i + 1
    local ck = qk(q, 'c:' .. id)
    local children = redis.call('SMEMBERS', ck)
    redis.call('DEL', ck)
    for _, child in ipairs(children) do
      local cq = redis.call('HGET', JQ, child)
      if cq then
        local ckey = jkey(cq, child)
        if redis.call('HGET', ckey, 'status') == 'waiting' then
          if st == 'succeeded' then
            if redis.call('HINCRBY', ckey, '_np', -1) <= 0 then release(cq, child, ckey, now) end
          else
            make_terminal(cq, child, ckey, 'waiting', 'cancelled', now, cjson.encode(
              { type = 'DependencyFailed', message = 'parent ' .. id .. ' ended ' .. st }))
          end
        end
      end
    end
  end
  PROP = {}
end

-- delete a job record and every index entry of it
local function delete_job(q, id, key)
  local v = redis.call('HMGET', key, 'status', 'task', 'idempotency_key')
  if v[1] then redis.call('ZREM', qk(q, 's:' .. v[1]), id) end
  if v[2] then redis.call('ZREM', gk('t:' .. v[2]), id) end
  if v[3] and redis.call('HGET', gk('idem'), v[3]) == id then redis.call('HDEL', gk('idem'), v[3]) end
  redis.call('ZREM', qk(q, 'i'), id)
  redis.call('ZREM', qk(q, 'ready'), id)
  redis.call('ZREM', qk(q, 'sched'), id)
  redis.call('ZREM', qk(q, 'lease'), id)
  redis.call('ZREM', qk(q, 'done'), id)
  redis.call('ZREM', gk('wh'), id)
  redis.call('HDEL', gk('wha'), id)
  redis.call('HDEL', JQ, id)
  redis.call('DEL', key, qk(q, 'c:' .. id))
end

-- move due scheduled/retrying jobs of q to ready (at most n)
local function promote(q, now, n)
  local ids = redis.call('ZRANGEBYSCORE', qk(q, 'sched'), '-inf', ims(ms(now)), 'LIMIT', 0, n)
  for _, id in ipairs(ids) do
    local key = jkey(q, id)
    local v = redis.call('HMGET', key, 'status', 'scheduled_at')
    if v[1] == 'scheduled' or v[1] == 'retrying' then
      local at = tonumber(v[2]) or now
      make_ready(q, id, key, v[1], now, ms(at))
      redis.call('HSET', key, '_ra', fmt(at))
    else
      redis.call('ZREM', qk(q, 'sched'), id)
    end
  end
  return #ids
end

-- a record as a JSON-ready table (replies are JSON strings: far cheaper to parse than RESP)
local function hobj(key)
  local h = redis.call('HGETALL', key)
  if #h == 0 then return nil end
  local t = {}
  for i = 1, #h, 2 do t[h[i]] = h[i + 1] end
  return t
end
local function jlist(list)
  if #list == 0 then return '[]' end
  return cjson.encode(list)
end
