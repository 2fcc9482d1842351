//! The Lua scripts the Redis store runs, each one store round trip, and their sources.
//!
//! Kept apart from the store so what runs inside Redis reads in one place; every script's keys
//! share one hash slot (the `{hash}` tag of the keys the faces derive).

/// Releases the lock if the token holds it, announcing the release when asked.
/// KEYS: lock. ARGV: token channel message ('' for none).
pub(super) const UNLOCK_LUA: &str = r"
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  if ARGV[3] ~= '' then
    redis.call('publish', ARGV[2], ARGV[3])
  end
  return 1
end
return 0";

/// Writes a value and announces the change, in one step (a crash cannot separate them).
/// KEYS: key. ARGV: value ttl_ms channel message.
pub(super) const PUT_LUA: &str = r"
redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
redis.call('publish', ARGV[3], ARGV[4])
return 1";

/// Removes a value and announces the change, in one step; returns how many keys went.
/// KEYS: key. ARGV: channel message.
pub(super) const DELETE_LUA: &str = r"
local removed = redis.call('unlink', KEYS[1])
redis.call('publish', ARGV[1], ARGV[2])
return removed";

/// Records a purge at the server's clock, trims the records to the most recent `keep` (the
/// oldest leave their time in the floor key) and announces it, in one step.
/// KEYS: records floor. ARGV: member keep channel. Returns the time (Unix µs; below 2^53, so
/// exact in Lua's doubles).
pub(super) const RECORD_PURGE_LUA: &str = r"
local t = redis.call('time')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local stamp = string.format('%.0f', now)
redis.call('zadd', KEYS[1], stamp, ARGV[1])
local over = redis.call('zcard', KEYS[1]) - tonumber(ARGV[2])
if over > 0 then
    local old = redis.call('zpopmin', KEYS[1], over)
    local top = tonumber(old[#old])
    if top > tonumber(redis.call('get', KEYS[2]) or '0') then
        redis.call('set', KEYS[2], string.format('%.0f', top))
    end
end
redis.call('publish', ARGV[3], 'X' .. KEYS[1] .. '\n' .. stamp .. '\n' .. ARGV[1])
return now";

/// Reads every purge record with the server's clock. KEYS: records floor.
/// Returns { now_us, floor_us, { member, µs, member, µs, ... } }.
pub(super) const READ_PURGES_LUA: &str = r"
local t = redis.call('time')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return { now, tonumber(redis.call('get', KEYS[2]) or '0'),
    redis.call('zrange', KEYS[1], 0, -1, 'withscores') }";

/// Takes a named lock and, in the same step, advances its fencing counter.
/// KEYS: lock, counter. ARGV: token ttl_ms. Returns the new counter value, or 0 when held.
pub(super) const LOCK_FENCED_LUA: &str = r"
if redis.call('set', KEYS[1], ARGV[1], 'nx', 'px', ARGV[2]) then
  return redis.call('incr', KEYS[2])
end
return 0";

pub(super) const EXTEND_LUA: &str = r"
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0";

/// Ends a fill in one round trip: the optional write, the notice, the compare-and-delete.
/// KEYS: the written key (or the notice key), the lock key (or the notice key).
/// ARGV: write? ('1': always, '2': only if the key is empty) value ttl_ms channel message
/// unlock? token change ('' unless the written key is not the notice key: its change message).
pub(super) const FINISH_LUA: &str = r"
if ARGV[1] == '1' then
  redis.call('set', KEYS[1], ARGV[2], 'px', ARGV[3])
elseif ARGV[1] == '2' then
  redis.call('set', KEYS[1], ARGV[2], 'px', ARGV[3], 'nx')
end
if ARGV[8] ~= '' then
  redis.call('publish', ARGV[4], ARGV[8])
end
redis.call('publish', ARGV[4], ARGV[5])
if ARGV[6] == '1' and redis.call('get', KEYS[2]) == ARGV[7] then
  redis.call('del', KEYS[2])
end
return 1";

/// Takes the lock unless the entry holds a value (other than the stale one the caller saw).
/// KEYS: entry, lock. ARGV: token ttl_ms seen-stamp. Returns {1, value}, {2} taken, {3} held.
pub(super) const LOCK_OR_READ_LUA: &str = r"
local v = redis.call('get', KEYS[1])
if v and string.sub(v, 5, 12) ~= ARGV[3] then
  return {1, v}
end
if redis.call('set', KEYS[2], ARGV[1], 'nx', 'px', ARGV[2]) then
  return {2}
end
return {3}";

/// A lookup that takes the fill lock when the entry holds nothing, in one round trip. A value
/// larger than ARGV[3] bytes is not returned through the script (copying 64 KiB through Lua
/// costs Redis about three times a plain `GET` of it): the caller reads it with `GET`, so a
/// hit on a large value costs two round trips and a miss still one.
/// KEYS: entry, lock. ARGV: token ttl_ms max_inline. Returns {1, value}, {2} taken, {3} held,
/// {4} a large value is there.
pub(super) const READ_OR_LOCK_LUA: &str = r"
local n = redis.call('strlen', KEYS[1])
if n > tonumber(ARGV[3]) then
  return {4}
end
if n > 0 then
  return {1, redis.call('get', KEYS[1])}
end
if redis.call('set', KEYS[2], ARGV[1], 'nx', 'px', ARGV[2]) then
  return {2}
end
return {3}";

/// The largest value [`READ_OR_LOCK_LUA`] returns itself.
pub(super) const MAX_INLINE_READ: i64 = 16 * 1024;
