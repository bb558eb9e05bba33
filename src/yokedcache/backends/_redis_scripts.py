"""Lua scripts of the Redis backend.

An entry is stored as one string: ``tag\\x1ftoken\\x1etag\\x1ftoken\\x1d<body>`` (no tags: ``\\x1d<body>``).
The header lets a script check the entry's recorded tokens against the current ones in the same round trip
as the read; tags never contain control characters, so the first ``\\x1d`` ends the header.
Tokens live at ``<ns>:__yc__:t:<tag>``; write counts (for ``invalidate_tags``' return value) at
``<ns>:__yc__:n:<tag>``.

Reads go through ``redis.pcall``: a key of another type under the prefix (a list, a hash, ...) is garbage,
never live, and must not abort the script with WRONGTYPE (which would make a listing, ``ttl`` or ``delete``
raise instead of treating it as a miss). Writes overwrite such keys.
"""

SCRIPT_NAMES = (
    *("GET", "INSPECT", "DELETE", "ALIVE", "TTL", "EXPIRE"),
    *("CAPTURE", "SET", "INVALIDATE", "LOCK", "UNLOCK"),
)

_LIVE = r"""
local function live(key, tp)
  local v = redis.pcall('GET', key)
  if type(v) ~= 'string' then return nil, nil end  -- absent (false) or not a string (an error reply)
  local h = string.find(v, '\29', 1, true)
  if h and h > 1 then
    local header = string.sub(v, 1, h - 1)
    for tag, tok in string.gmatch(header, '([^\30\31]+)\31([^\30]*)') do
      if redis.pcall('GET', tp .. tag) ~= tok then
        redis.call('DEL', key)
        return nil, nil
      end
    end
  end
  return v, h
end
"""

# The end of GET (on a miss) and the whole of CAPTURE: the tokens of the (tag, candidate) pairs from
# ARGV[2], created from the candidates where missing (or not a string).
_CAPTURE_FROM_ARGV = r"""
local out = {}
for i = 2, #ARGV, 2 do
  local tk = ARGV[1] .. ARGV[i]
  local cur = redis.pcall('GET', tk)
  if type(cur) ~= 'string' then
    redis.call('SET', tk, ARGV[i + 1])
    cur = ARGV[i + 1]
  end
  out[#out + 1] = cur
end
return out
"""

# KEYS[1] = entry; ARGV[1] = token prefix, then optionally (tag, candidate) pairs. Returns the whole stored
# frame of a live entry. Otherwise nil, or — when tags were given — the current tokens of those tags
# (created from the candidates if missing), so a miss learns what its computed value must be stored under
# in the same round trip as the read. This is the hit path, so it is written for speed: an untagged entry
# (first byte \x1d) is returned at once, and the frame is returned as stored (the client strips the
# header; a Lua substring would copy and intern the whole value).
GET = r"""
local v = redis.call('GET', KEYS[1])
if v then
  if string.byte(v, 1) == 29 then return v end
  local h = string.find(v, '\29', 1, true)
  if not h then return v end
  for tag, tok in string.gmatch(string.sub(v, 1, h - 1), '([^\30\31]+)\31([^\30]*)') do
    if redis.call('GET', ARGV[1] .. tag) ~= tok then
      redis.call('DEL', KEYS[1])
      v = false
      break
    end
  end
  if v then return v end
end
if #ARGV < 2 then return false end
""" + _CAPTURE_FROM_ARGV

# KEYS[1] = entry; ARGV[1] = token prefix. Returns {frame, pttl} of a live entry, else nil.
INSPECT = _LIVE + r"""
local v = live(KEYS[1], ARGV[1])
if not v then return false end
return {v, redis.call('PTTL', KEYS[1])}
"""

# KEYS = entries; ARGV[1] = token prefix. Deletes them; returns how many were live.
DELETE = _LIVE + r"""
local n = 0
for i = 1, #KEYS do
  if live(KEYS[i], ARGV[1]) then n = n + 1 end
  redis.call('DEL', KEYS[i])
end
return n
"""

# KEYS = entries; ARGV[1] = token prefix. Returns 1/0 per key: live or not.
ALIVE = _LIVE + r"""
local out = {}
for i = 1, #KEYS do
  if live(KEYS[i], ARGV[1]) then out[i] = 1 else out[i] = 0 end
end
return out
"""

# KEYS[1] = entry; ARGV[1] = token prefix. PTTL of a live entry, else nil.
TTL = _LIVE + r"""
if not live(KEYS[1], ARGV[1]) then return false end
return redis.call('PTTL', KEYS[1])
"""

# KEYS[1] = entry; ARGV[1] = token prefix, ARGV[2] = ttl ms.
EXPIRE = _LIVE + r"""
if not live(KEYS[1], ARGV[1]) then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""

# ARGV[1] = token prefix, then (tag, candidate) pairs. Returns the current tokens, creating missing ones.
CAPTURE = _CAPTURE_FROM_ARGV

# KEYS = entries. ARGV[1] = token prefix, ARGV[2] = count prefix, ARGV[3] = 'c' (record current tokens,
# creating missing ones from the candidates given) or 'k' (tokens captured before computing: store only if
# all still current), ARGV[4] = number of tags, then (tag, token) pairs, then (body, ttl ms) per key.
SET = r"""
local ntags = tonumber(ARGV[4])
local parts = {}
for i = 0, ntags - 1 do
  local tag = ARGV[5 + 2 * i]
  local tok = ARGV[6 + 2 * i]
  local tk = ARGV[1] .. tag
  local cur = redis.pcall('GET', tk)
  if type(cur) ~= 'string' then cur = nil end
  if ARGV[3] == 'k' then
    if cur ~= tok then return 0 end
  elseif not cur then
    redis.call('SET', tk, tok)
    cur = tok
  end
  parts[#parts + 1] = tag .. '\31' .. cur
end
local header = table.concat(parts, '\30') .. '\29'
local base = 5 + 2 * ntags
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], header .. ARGV[base + 2 * (i - 1)], 'PX', ARGV[base + 2 * (i - 1) + 1])
end
for i = 0, ntags - 1 do
  local ck = ARGV[2] .. ARGV[5 + 2 * i]
  if type(redis.pcall('INCRBY', ck, #KEYS)) ~= 'number' then redis.call('SET', ck, #KEYS) end
end
return 1
"""

# ARGV[1] = token prefix, ARGV[2] = count prefix, then (tag, new token) pairs.
# Returns the summed write counts.
INVALIDATE = r"""
local n = 0
for i = 3, #ARGV, 2 do
  redis.call('SET', ARGV[1] .. ARGV[i], ARGV[i + 1])
  local ck = ARGV[2] .. ARGV[i]
  local c = redis.pcall('GET', ck)
  if c then
    if type(c) == 'string' and tonumber(c) then n = n + tonumber(c) end
    redis.call('DEL', ck)
  end
end
return n
"""

# KEYS[1] = lock, KEYS[2] = wake list; ARGV[1] = owner, ARGV[2] = lease ms. Takes the lock if free and
# clears a wake-up left by the previous holder, so this holder's waiters sleep until *its* release.
LOCK = r"""
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""

# KEYS[1] = lock, KEYS[2] = wake list; ARGV[1] = owner. Releases the lock if still ours and wakes a waiter
# (each woken waiter pushes again, so the wake-up cascades through all of them).
UNLOCK = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('LPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], 2000)
return 1
"""
