--[[ get.lua: read jobs (or only their revisions) by id.

KEYS: [1] {P}:jq (routes the call to the slot of {P}; the other keys are built from P and
  share that hash tag, see _common.lua).
ARGV: [1] prefix P, [2] mode ('all' = whole records, 'rev' = revisions only), [3..] job ids.
Touches (read only): {P}:jq, {P}:q/Q/j:<id>.
Returns: 'all': a JSON list of the records of the known jobs;
         'rev': a flat list id, revision for the known jobs.
]]
local out = {}
local all = ARGV[2] == 'all'
for i = 3, #ARGV do
  local id = ARGV[i]
  local q = redis.call('HGET', JQ, id)
  if q then
    if all then
      local h = hobj(jkey(q, id))
      if h then out[#out + 1] = h end
    else
      local r = redis.call('HGET', jkey(q, id), 'revision')
      if r then
        out[#out + 1] = id
        out[#out + 1] = r
      end
    end
  end
end
if all then return jlist(out) end
return out
