--[[ list.lua: one page of jobs, newest first, with optional filters.

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] index to walk: 'all' ({P}:i), 'status' ({P}:s:<status>), 'queue' ({P}:q/Q/i),
  'queue_status' ({P}:q/Q/s:<status>), 'task' ({P}:t:<task>); [3] status filter, [4] task filter,
  [5] queue filter ('' = none); [6] cursor = last id of the previous page ('' = from the newest);
  [7] limit; [8] scan budget (index entries examined at most).
Indexes are lex-ordered zsets (score 0) of UUIDv7 ids, so the order is creation time and a cursor
stays stable under concurrent inserts (new ids sort after every cursor).
Touches (read only): the index, {P}:jq, {P}:q/Q/j:<id>.
Returns JSON: [next cursor ('' = none), record, record, ...].
]]
local kind, fst, ftask, fq = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local limit, budget = tonumber(ARGV[7]), tonumber(ARGV[8])
local idx
if kind == 'status' then idx = gk('s:' .. fst)
elseif kind == 'queue' then idx = qk(fq, 'i')
elseif kind == 'queue_status' then idx = qk(fq, 's:' .. fst)
elseif kind == 'task' then idx = gk('t:' .. ftask)
else idx = gk('i') end

local start = '+'
if ARGV[6] ~= '' then start = '(' .. ARGV[6] end
local page = {}
local last_on_page = nil
local scanned = 0
local more = false
local chunk = math.min(math.max(limit * 2, 64), 1000)
while scanned < budget do
  local ids = redis.call('ZREVRANGEBYLEX', idx, start, '-', 'LIMIT', 0, chunk)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    scanned = scanned + 1
    start = '(' .. id
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
    if scanned >= budget then break end
  end
  if more then break end
end
local cursor = ''
if more then
  cursor = last_on_page
elseif scanned >= budget then
  -- budget ran out before the end of the index: resume after the last entry examined
  cursor = string.sub(start, 2)
end
local out = { cursor }
for _, h in ipairs(page) do out[#out + 1] = h end
return cjson.encode(out)
