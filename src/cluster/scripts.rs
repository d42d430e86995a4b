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
