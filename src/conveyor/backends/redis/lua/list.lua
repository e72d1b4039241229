--[[ list.lua: one page of jobs, newest first, with optional filters.

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] index to walk: 'all' (every {P}:q/Q/i), 'status' (every {P}:q/Q/s:<status>),
  'queue' ({P}:q/Q/i), 'queue_status' ({P}:q/Q/s:<status>), 'task' ({P}:t:<task>); [3] status
  filter, [4] task filter, [5] queue filter ('' = none); [6] cursor = last id of the previous page
  ('' = from the newest); [7] limit; [8] scan budget (index entries examined at most).
Indexes are lex-ordered zsets (score 0) of UUIDv7 ids, so the order is creation time and a cursor
stays stable under concurrent inserts (new ids sort after every cursor). 'all' and 'status' have
no app-wide index: they merge the per-queue indexes of the queues in {P}:queues, newest first
(ids are unique, so the merge is the same order a single index would give).
Touches (read only): {P}:queues, the index(es), {P}:jq, {P}:q/Q/j:<id>.
Returns JSON: [next cursor ('' = none), record, record, ...].
]]
local kind, fst, ftask, fq = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local limit, budget = tonumber(ARGV[7]), tonumber(ARGV[8])
local idx = {}
if kind == 'status' or kind == 'all' then
  local name = 'i'
  if kind == 'status' then name = 's:' .. fst end
  for _, q in ipairs(redis.call('SMEMBERS', gk('queues'))) do idx[#idx + 1] = qk(q, name) end
elseif kind == 'queue' then idx[1] = qk(fq, 'i')
elseif kind == 'queue_status' then idx[1] = qk(fq, 's:' .. fst)
else idx[1] = gk('t:' .. ftask) end

local start = '+'
if ARGV[6] ~= '' then start = '(' .. ARGV[6] end
-- one descending stream per index, read in chunks (a merged stream's chunks start small and
-- double as its index keeps supplying the page); a merge takes the greatest head each time
local chunk = math.min(math.max(limit * 2, 64), 1000)
local first = chunk
if #idx > 1 then first = math.min(chunk, math.max(16, math.ceil((limit + 1) / #idx))) end
local buf, pos, from, ended, size = {}, {}, {}, {}, {}
for k = 1, #idx do buf[k], pos[k], from[k], ended[k], size[k] = {}, 1, start, false, first end
local function head(k)
  if pos[k] > #buf[k] then
    if ended[k] then return nil end
    local n = size[k]
    local r = redis.call('ZREVRANGEBYLEX', idx[k], from[k], '-', 'LIMIT', 0, n)
    if #r < n then ended[k] = true end
    size[k] = math.min(n * 2, 1000)
    if #r == 0 then return nil end
    buf[k], pos[k], from[k] = r, 1, '(' .. r[#r]
  end
  return buf[k][pos[k]]
end
local function take()
  local best, bk = nil, nil
  for k = 1, #idx do
    local h = head(k)
    if h and (not best or h > best) then best, bk = h, k end
  end
  if bk then pos[bk] = pos[bk] + 1 end
  return best
end

local page = {}
local last_on_page = nil
local last_seen = nil
local scanned = 0
local more = false
while scanned < budget do
  local id = take()
  if not id then break end
  scanned = scanned + 1
  last_seen = id
  local q = redis.call('HGET', JQ, id)
  if q then
    local key = jkey(q, id)
    local v = redis.call('HMGET', key, 'status', 'task', 'queue')
    if v[1] and (fst == '' or v[1] == fst) and (ftask == '' or v[2] == ftask) and (fq == '' or v[3] == fq) then
      if #page >= limit then
        more = true
        break
      end
      page[#page + 1] = hobj(key)
      last_on_page = id
    end
  end
end
local cursor = ''
if more then
  cursor = last_on_page
elseif scanned >= budget and take() then
  -- budget ran out before the end of the index: resume after the last entry examined
  cursor = last_seen
end
local out = { cursor }
for _, h in ipairs(page) do out[#out + 1] = h end
return cjson.encode(out)
