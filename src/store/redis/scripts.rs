//! The Lua scripts the Redis backend runs server-side, each atomic. Key and argument layouts are
//! written above each script; the Rust side builds them in `mod.rs`. Must not import `runtime`,
//! `api` or `sim`.
//!
//! Keys are Rust strings, so valid UTF-8, and never contain the byte 0xFF: `(prefix..'\255'` is
//! therefore an exclusive upper bound of every key starting with `prefix` in a lex range.

/// Applies one batch: session row, secret ops in order, then events.
///
/// KEYS: 1 sessions, 2 secret values, 3 secret index, 4 seqs, 5 cursor, 6 log, 7 payloads,
/// 8 event index, 9 sessions with events, 10 fault-injection kind, 11 the session's fencing
/// counter.
/// ARGV: 1 session id, 2 the last seq the caller sealed against, 3 encoded row ('' = none),
/// 4 op count, then (op, key, value) per op (op: put | del | prefix | all), then the event
/// count, then (kind, time, sealed payload) per event, then the writer's fencing token ('0'
/// for a writer that never claimed the session).
///
/// Replies `{'ok', first cursor}` (0 without events), `{'fenced', counter}` when the session
/// was claimed after the writer's token (a former owner: nothing written, ever), `{'seq',
/// current}` when the seq moved (nothing written: re-seal and retry), `{'norow'}` when a secret
/// is put without a session row, `{'fault', kind}` for an injected fault. Every check runs
/// before the first write, so a refused batch leaves nothing behind.
pub(super) const COMMIT: &str = r"
local id = ARGV[1]
local fence = redis.call('GET', KEYS[11]) or '0'
if fence ~= ARGV[#ARGV] then return {'fenced', fence} end
local seq = redis.call('HGET', KEYS[4], id) or '0'
if seq ~= ARGV[2] then return {'seq', seq} end
local nops = tonumber(ARGV[4])
local evat = 5 + 3 * nops
local nev = tonumber(ARGV[evat])
local fault = redis.call('GET', KEYS[10])
if fault then
  for n = 0, nev - 1 do
    if ARGV[evat + 1 + 3 * n] == fault then return {'fault', fault} end
  end
end
if ARGV[3] == '' and redis.call('HEXISTS', KEYS[1], id) == 0 then
  for n = 0, nops - 1 do
    if ARGV[5 + 3 * n] == 'put' then return {'norow'} end
  end
end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], id, ARGV[3]) end
for n = 0, nops - 1 do
  local at = 5 + 3 * n
  local op, key = ARGV[at], ARGV[at + 1]
  if op == 'put' then
    redis.call('HSET', KEYS[2], key, ARGV[at + 2])
    redis.call('ZADD', KEYS[3], 0, key)
  elseif op == 'del' then
    redis.call('HDEL', KEYS[2], key)
    redis.call('ZREM', KEYS[3], key)
  elseif op == 'prefix' then
    local doomed = redis.call('ZRANGEBYLEX', KEYS[3], '[' .. key, '(' .. key .. '\255')
    for _, k in ipairs(doomed) do
      redis.call('HDEL', KEYS[2], k)
      redis.call('ZREM', KEYS[3], k)
    end
  elseif op == 'all' then
    redis.call('DEL', KEYS[2], KEYS[3])
  end
end
if nev == 0 then return {'ok', 0} end
local last = redis.call('INCRBY', KEYS[5], nev)
local first = last - nev + 1
local s = tonumber(seq)
for n = 0, nev - 1 do
  local at = evat + 1 + 3 * n
  local c = string.format('%d', first + n)
  s = s + 1
  redis.call('XADD', KEYS[6], c .. '-0', 's', id, 'q', string.format('%d', s),
    'k', ARGV[at], 't', ARGV[at + 1])
  redis.call('HSET', KEYS[7], c, ARGV[at + 2])
  redis.call('ZADD', KEYS[8], first + n, c)
end
redis.call('HSET', KEYS[4], id, string.format('%d', s))
redis.call('SADD', KEYS[9], id)
return {'ok', first}
";

/// Compare-and-set of one hash field, optionally quarantining what it held: used to re-seal a
/// record read under an older key, and to set an unreadable one aside, without overwriting a
/// value written meanwhile.
///
/// KEYS: 1 hash, 2 quarantine list, 3 (optional) lex index of the hash's fields.
/// ARGV: 1 field, 2 the value expected, 3 replacement ('' = delete the field), 4 quarantine
/// entry ('' = none). Replies 1 when applied, 0 when the field no longer holds the value.
pub(super) const SWAP: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  if KEYS[3] then redis.call('ZREM', KEYS[3], ARGV[1]) end
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
if ARGV[4] ~= '' then redis.call('RPUSH', KEYS[2], ARGV[4]) end
return 1
";

/// Secrets whose key starts with a prefix, in key order, as one consistent read.
///
/// KEYS: 1 secret index, 2 secret values. ARGV: 1 prefix. Replies key, value, key, value, ...
pub(super) const PREFIX: &str = r"
local ks = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. ARGV[1], '(' .. ARGV[1] .. '\255')
local out = {}
for _, k in ipairs(ks) do
  out[#out + 1] = k
  out[#out + 1] = redis.call('HGET', KEYS[2], k) or ''
end
return out
";

/// A page of the log in cursor order, with payloads.
///
/// KEYS: 1 log, 2 payloads. ARGV: 1 first stream id, 2 count.
/// Replies one `{cursor, session, seq, kind, time, payload}` per event ('' = withheld).
pub(super) const PAGE: &str = r"
local out = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])) do
  local f = e[2]
  local c = string.match(e[1], '^%d+')
  out[#out + 1] = {c, f[2], f[4], f[6], f[8], redis.call('HGET', KEYS[2], c) or ''}
end
return out
";

/// A page of the events of some sessions, merged in cursor order through their indexes.
///
/// KEYS: 1 log, 2 payloads, 3.. the sessions' event indexes. ARGV: 1 after (exclusive),
/// 2 count. Replies as [`PAGE`].
pub(super) const SESSIONS_PAGE: &str = r"
local count = tonumber(ARGV[2])
local cs = {}
for i = 3, #KEYS do
  local got = redis.call('ZRANGEBYSCORE', KEYS[i], '(' .. ARGV[1], '+inf', 'LIMIT', 0, count)
  for _, c in ipairs(got) do cs[#cs + 1] = tonumber(c) end
end
table.sort(cs)
local out = {}
for n = 1, math.min(#cs, count) do
  local c = string.format('%d', cs[n])
  local e = redis.call('XRANGE', KEYS[1], c .. '-0', c .. '-0')[1]
  if e then
    local f = e[2]
    out[#out + 1] = {c, f[2], f[4], f[6], f[8], redis.call('HGET', KEYS[2], c) or ''}
  end
end
return out
";

/// Claims a session for an owner: the lease `"<owner>|<token>"` with a TTL, and a new fencing
/// token (the session's counter, which only grows) unless the owner already holds it.
///
/// KEYS: 1 lease, 2 fencing counter. ARGV: 1 owner, 2 TTL in ms.
/// Replies `{'ok', token}` or `{'held', owner, ms left}`.
pub(super) const CLAIM: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local owner, token = string.match(cur, '^(.*)|(%d+)$')
  if owner == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {'ok', token}
  end
  return {'held', owner or '', redis.call('PTTL', KEYS[1])}
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return {'ok', token}
";

/// Renews leases: each is extended while it is still this owner's with this token, or taken
/// again when it lapsed and nobody has claimed the session since (its counter still at the
/// token). Anything else is lost.
///
/// KEYS: (lease, fencing counter) per session. ARGV: 1 owner, 2 TTL in ms, then the token per
/// session. Replies 1 (held) or 0 (lost) per session.
pub(super) const RENEW: &str = r"
local out = {}
for i = 1, #KEYS / 2 do
  local lease, fence = KEYS[2 * i - 1], KEYS[2 * i]
  local mine = ARGV[1] .. '|' .. ARGV[2 + i]
  local cur = redis.call('GET', lease)
  if cur == mine then
    redis.call('PEXPIRE', lease, ARGV[2])
    out[i] = 1
  elseif not cur and redis.call('GET', fence) == ARGV[2 + i] then
    redis.call('SET', lease, mine, 'PX', ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
";

/// Gives a lease up if it is still this owner's.
///
/// KEYS: 1 lease. ARGV: 1 `"<owner>|<token>"`. Replies 1 when released.
pub(super) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Announces a gateway among those sharing the store, drops lapsed announcements, and lists the
/// live ones. An announcement is `"<started ms>|<serving>|<expiry ms>"`, by Redis' clock.
///
/// KEYS: 1 members hash. ARGV: 1 owner, 2 started ms, 3 sessions served, 4 TTL in ms.
/// Replies `{owner, started ms, serving}` per live member.
pub(super) const ANNOUNCE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = string.format('%d', now + tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3] .. '|' .. expiry)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local started, serving, until_ms = string.match(all[i + 1], '^(%d+)|(%d+)|(%d+)$')
  if until_ms and tonumber(until_ms) > now then
    out[#out + 1] = {all[i], started, serving}
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
";
