//! The Lua scripts the Redis engine runs (CLUSTER.md, "The scripts"): each
//! one atomic call, so that two nodes can never claim one id.

/// KEYS: ids bitmap, owner hash, held set, lease. ARGV: lowest id, highest
/// id, incarnation, change channel. Returns the id, -1 if the range is
/// full, -2 if the caller's lease is gone (it is fenced).
pub(super) const CLAIM: &str = r#"
if redis.call('EXISTS', KEYS[4]) == 0 then return -2 end
local id = redis.call('BITPOS', KEYS[1], 0, ARGV[1], ARGV[2], 'BIT')
if id < tonumber(ARGV[1]) or id > tonumber(ARGV[2]) then return -1 end
redis.call('SETBIT', KEYS[1], id, 1)
redis.call('HSET', KEYS[2], id, ARGV[3])
redis.call('SADD', KEYS[3], id)
redis.call('PUBLISH', ARGV[4], '+' .. id .. ' ' .. ARGV[3])
return id
"#;

/// KEYS: ids bitmap, owner hash, held set, who hash. ARGV: id,
/// incarnation, change channel. Frees the id (and what it showed) only if
/// the caller still holds it.
pub(super) const RELEASE: &str = r#"
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('SETBIT', KEYS[1], ARGV[1], 0)
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[3], '-' .. ARGV[1] .. ' ' .. ARGV[2])
return 1
"#;

/// KEYS: names hash, the caller's names set, lease. ARGV: name (lower
/// case), incarnation. Returns 1 if the name is now the caller's, 0 if any
/// session holds it (one of the caller's own included), -2 if the caller's
/// lease is gone (it is fenced).
pub(super) const CLAIM_NAME: &str = r#"
if redis.call('EXISTS', KEYS[3]) == 0 then return -2 end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"#;

/// KEYS: names hash, the caller's names set. ARGV: name, incarnation.
/// Frees the name only if the caller holds it.
pub(super) const RELEASE_NAME: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"#;

/// KEYS: owner hash, who hash. ARGV: id, incarnation, roles, name (empty:
/// none), change channel. Notes what an id the caller holds shows, for
/// every node's WHO; nothing if the id is not the caller's.
pub(super) const SHOW: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. ' ' .. ARGV[4])
redis.call('PUBLISH', ARGV[5], '=' .. ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4])
return 1
"#;

/// KEYS: nodes set, ids bitmap, owner hash, who hash, names hash. ARGV:
/// key prefix, change channel. Frees the ids and names of every
/// incarnation whose lease is gone and announces it down; returns how many
/// were reaped.
pub(super) const REAP: &str = r#"
local reaped = 0
for _, inc in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'lease:' .. inc) == 0 then
    local held = ARGV[1] .. 'held:' .. inc
    for _, id in ipairs(redis.call('SMEMBERS', held)) do
      if redis.call('HGET', KEYS[3], id) == inc then
        redis.call('SETBIT', KEYS[2], id, 0)
        redis.call('HDEL', KEYS[3], id)
        redis.call('HDEL', KEYS[4], id)
      end
    end
    redis.call('DEL', held)
    local names = ARGV[1] .. 'names:' .. inc
    for _, name in ipairs(redis.call('SMEMBERS', names)) do
      if redis.call('HGET', KEYS[5], name) == inc then
        redis.call('HDEL', KEYS[5], name)
      end
    end
    redis.call('DEL', names)
    redis.call('SREM', KEYS[1], inc)
    redis.call('PUBLISH', ARGV[2], 'down ' .. inc)
    reaped = reaped + 1
  end
end
return reaped
"#;

/// KEYS: rooms hash (name → `ID KIND SPELLING`), room ids bitmap, lease.
/// ARGV: room name (lower case), spelling, kind (0 room, 1 queue), member
/// (lower case), lowest id, highest id, members bound, rooms-per-name
/// bound, may create (1/0), key prefix, change channel, prefetch. Makes
/// the member one of the room's, creating the room at the lowest free id
/// if no room has the name, and publishes `j ID KIND SPELLING MEMBER
/// PREFETCH` (a member already, too: its JOIN again sets the prefetch
/// afresh on every node; nothing else changes); a queue member's prefetch
/// is kept in `prefetch:ID` (member → prefetch), for a node reading the
/// rooms whole. Returns {id, kind, members, spelling}, or {code}: -1 no
/// free id, -2 fenced, -3 the other kind, -4 room full, -5 the member is in
/// too many rooms, -6 no such room and the member may not create it.
pub(super) const JOIN_ROOM: &str = r#"
if redis.call('EXISTS', KEYS[3]) == 0 then return {-2} end
local id, kind, spelling
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held then
  local a, b, c = string.match(held, '^(%d+) (%d) (.+)$')
  id = tonumber(a)
  kind = b
  spelling = c
  if kind ~= ARGV[3] then return {-3} end
  local members = ARGV[10] .. 'members:' .. id
  if redis.call('SISMEMBER', members, ARGV[4]) == 1 then
    if kind == '1' then redis.call('HSET', ARGV[10] .. 'prefetch:' .. id, ARGV[4], ARGV[12]) end
    redis.call('PUBLISH', ARGV[11], 'j ' .. id .. ' ' .. kind .. ' ' .. spelling .. ' ' .. ARGV[4] .. ' ' .. ARGV[12])
    return {id, tonumber(kind), redis.call('SCARD', members), spelling}
  end
  if redis.call('SCARD', members) >= tonumber(ARGV[7]) then return {-4} end
end
local of = ARGV[10] .. 'roomsof:' .. ARGV[4]
if redis.call('SCARD', of) >= tonumber(ARGV[8]) then return {-5} end
if not id then
  if ARGV[9] ~= '1' then return {-6} end
  id = redis.call('BITPOS', KEYS[2], 0, ARGV[5], ARGV[6], 'BIT')
  if id < tonumber(ARGV[5]) or id > tonumber(ARGV[6]) then return {-1} end
  redis.call('SETBIT', KEYS[2], id, 1)
  kind = ARGV[3]
  spelling = ARGV[2]
  redis.call('HSET', KEYS[1], ARGV[1], id .. ' ' .. kind .. ' ' .. spelling)
end
local members = ARGV[10] .. 'members:' .. id
redis.call('SADD', members, ARGV[4])
redis.call('SADD', of, id)
if kind == '1' then redis.call('HSET', ARGV[10] .. 'prefetch:' .. id, ARGV[4], ARGV[12]) end
redis.call('PUBLISH', ARGV[11], 'j ' .. id .. ' ' .. kind .. ' ' .. spelling .. ' ' .. ARGV[4] .. ' ' .. ARGV[12])
return {id, tonumber(kind), redis.call('SCARD', members), spelling}
"#;

/// KEYS: rooms hash, room ids bitmap. ARGV: room name (lower case), member
/// (lower case), key prefix, change channel. The member leaves (and its
/// prefetch with it); a room left with no member is gone and its id free. Returns {id, kind, members
/// left, spelling}, or {-7}: no such room, or not a member.
pub(super) const LEAVE_ROOM: &str = r#"
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held then return {-7} end
local a, kind, spelling = string.match(held, '^(%d+) (%d) (.+)$')
local id = tonumber(a)
local members = ARGV[3] .. 'members:' .. id
if redis.call('SREM', members, ARGV[2]) == 0 then return {-7} end
redis.call('SREM', ARGV[3] .. 'roomsof:' .. ARGV[2], id)
redis.call('HDEL', ARGV[3] .. 'prefetch:' .. id, ARGV[2])
local left = redis.call('SCARD', members)
if left == 0 then
  redis.call('DEL', ARGV[3] .. 'prefetch:' .. id)
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SETBIT', KEYS[2], id, 0)
end
redis.call('PUBLISH', ARGV[4], 'l ' .. id .. ' ' .. ARGV[2])
return {id, tonumber(kind), left, spelling}
"#;
