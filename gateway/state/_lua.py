"""The Lua scripts that read and change one shared breaker atomically inside Redis.

A breaker is a hash `{state, failures, successes, opened_at}` (opened_at in ms of Redis's own
clock, so replicas whose clocks disagree still agree on when a breaker may be probed) plus a
probe lease key holding the token of the one replica allowed to probe while half-open.
A closed breaker with no failures is no key at all.

With a `failure_rate` policy, a third key holds the rate window shared by every replica: a
hash of buckets `c:<n>` (calls) and `f:<n>` (failed calls), where n counts periods of
window_ms / WINDOW_BUCKETS on Redis's clock; only the last WINDOW_BUCKETS buckets count, older
ones are deleted as they are met. FAILURE, SUCCESS and TALLY add to it (TALLY carries the
successes a replica saw since its last turn, so healthy traffic costs one script call per
breaker per turn, not one per request), only while the breaker is closed; every opening
deletes it, so each closed period is judged on its own calls.

Every script answers with the breaker as it stands afterwards:
`{state, failures, successes, open_for_ms, granted, repaired, tripped, forced}`. open_for_ms is
measured on Redis's clock for the same reason; granted is 1 only when ACQUIRE_PROBE gave this
caller the lease; repaired names what the script overwrote because it was malformed ('' when
nothing): `record:<fields>`, `lease` and/or `window`, joined by ';'; tripped is why this very
call opened the breaker (consecutive, failure_rate or probe; '' when it did not), so the one
replica whose outcome opened it reports the trip; forced is 1 while an operator holds the
breaker open (FORCE_OPEN, a `forced` field in the hash: such a record never expires and is
never moved to half-open, so no replica probes it, until RESET deletes it).

Anything in Redis can be changed by hand or by another program, so a record is read only as
`store` writes it: a state of closed, open or half_open, counts and opened_at of at most 15
decimal digits (exact in Lua's doubles; not negative, fractional, `inf` or `nan`, which
`tonumber` would take), and, unless closed, an opened_at no later than a minute past Redis's
clock (a breaker opened in the future would never be probed). A script that only reads a
malformed record answers the error `MALFORMED <fields>` and changes nothing; FAILURE and SUCCESS
overwrite it as if there had been no record, so the next outcome any replica reports repairs
it. A lease is a string with an expiry holding a 32-hex-digit token (RedisState.owner); anything
else at that key is deleted before it is read or taken, or it would keep every replica from
probing.

A rate window is read the same way: anything but a hash of such fields with whole values is
deleted and counted afresh (`window` in repaired).

KEYS[1] is the hash, KEYS[2] the lease, KEYS[3] the rate window; all carry the same hash tag so
that a Redis Cluster keeps them on one slot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

_PRELUDE = """
-- How far past Redis's clock an opened_at may be: a failover to a replica whose clock is a
-- little behind is no malformation; a record opened years ahead is.
local MAX_CLOCK_STEP_MS = 60000
local STATES = {closed = true, open = true, half_open = true}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function whole(value)
  return type(value) == 'string' and #value <= 15 and string.match(value, '^%d+$') ~= nil
end

-- The record, or nil and the names of its malformed fields.
local function read(key, now)
  local v = redis.call('HMGET', key, 'state', 'failures', 'successes', 'opened_at')
  if not (v[1] or v[2] or v[3] or v[4]) then
    return 'closed', 0, 0, 0
  end
  local bad = {}
  if not STATES[v[1]] then table.insert(bad, 'state') end
  if not whole(v[2]) then table.insert(bad, 'failures') end
  if not whole(v[3]) then table.insert(bad, 'successes') end
  if not whole(v[4]) or (v[1] ~= 'closed' and tonumber(v[4]) > now + MAX_CLOCK_STEP_MS) then
    table.insert(bad, 'opened_at')
  end
  if #bad > 0 then return nil, table.concat(bad, ',') end
  return v[1], tonumber(v[2]), tonumber(v[3]), tonumber(v[4])
end

local function noted(repaired, what)
  if repaired == '' then return what end
  return repaired .. ';' .. what
end

-- For FAILURE and SUCCESS: a malformed record is replaced as if there were none.
local function load(key, now)
  local state, failures, successes, opened_at = read(key, now)
  if state == nil then
    redis.call('DEL', key)
    return 'closed', 0, 0, 0, 'record:' .. failures
  end
  return state, failures, successes, opened_at, ''
end

local function store(key, ttl_ms, state, failures, successes, opened_at)
  if state == 'closed' and failures == 0 then
    redis.call('DEL', key)
    return
  end
  redis.call('HSET', key, 'state', state, 'failures', failures,
             'successes', successes, 'opened_at', opened_at)
  if redis.call('HGET', key, 'forced') == '1' then
    redis.call('PERSIST', key)  -- drained by an operator: kept until reset
  else
    redis.call('PEXPIRE', key, ttl_ms)
  end
end

-- Forced open by an operator (FORCE_OPEN): no probe until RESET deletes the record.
local function forced(key)
  return redis.call('HGET', key, 'forced') == '1'
end

-- Deletes whatever at the lease key is not a lease (see the module's docstring).
local function clear_bad_lease(lease_key, repaired)
  local kind = redis.call('TYPE', lease_key)['ok']
  if kind == 'none' then return repaired end
  if kind == 'string' and redis.call('PTTL', lease_key) >= 0 then
    local token = redis.call('GET', lease_key)
    if #token == 32 and string.match(token, '^%x+$') then return repaired end
  end
  redis.call('DEL', lease_key)
  return noted(repaired, 'lease')
end

local function release(lease_key, owner, repaired)
  repaired = clear_bad_lease(lease_key, repaired)
  if redis.call('GET', lease_key) == owner then
    redis.call('DEL', lease_key)
  end
  return repaired
end

local function reply(state, failures, successes, opened_at, now, granted, repaired, tripped)
  local open_for = 0
  if state ~= 'closed' then open_for = math.max(0, now - opened_at) end
  local is_forced = 0
  if forced(KEYS[1]) then is_forced = 1 end
  return {state, failures, successes, open_for, granted, repaired, tripped or '', is_forced}
end

local WINDOW_BUCKETS = 10

-- Adds `calls` calls, `failed` of them failures, to the rate window at `key`, and answers the
-- window's calls and failures afterwards (buckets older than the window are deleted).
local function window_add(key, now, window_ms, calls, failed, repaired)
  local width = math.max(1, math.floor(window_ms / WINDOW_BUCKETS))
  local current = math.floor(now / width)
  local kind = redis.call('TYPE', key)['ok']
  local total_calls, total_failed, stale = 0, 0, {}
  if kind ~= 'none' then
    local bad = kind ~= 'hash'
    if not bad then
      local fields = redis.call('HGETALL', key)
      for i = 1, #fields, 2 do
        local which, at = string.match(fields[i], '^([cf]):(%d+)$')
        if which == nil or #at > 15 or not whole(fields[i + 1]) then
          bad = true
          break
        end
        at = tonumber(at)
        if at <= current - WINDOW_BUCKETS or at > current then
          table.insert(stale, fields[i])
        elseif which == 'c' then
          total_calls = total_calls + tonumber(fields[i + 1])
        else
          total_failed = total_failed + tonumber(fields[i + 1])
        end
      end
    end
    if bad then
      redis.call('DEL', key)
      total_calls, total_failed, stale = 0, 0, {}
      repaired = noted(repaired, 'window')
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  if calls > 0 then redis.call('HINCRBY', key, 'c:' .. current, calls) end
  if failed > 0 then redis.call('HINCRBY', key, 'f:' .. current, failed) end
  if calls > 0 or #stale > 0 then redis.call('PEXPIRE', key, window_ms + width) end
  return total_calls + calls, total_failed + failed, repaired
end
"""

# KEYS: hash, lease.  ARGV: (none)
_SNAPSHOT = """
local now = now_ms()
local state, failures, successes, opened_at = read(KEYS[1], now)
if state == nil then return redis.error_reply('MALFORMED ' .. failures) end
return reply(state, failures, successes, opened_at, now, 0, '')
"""

# ARGV: fail_max, ttl_ms, owner, was_probe (0/1), count, ok, window_ms, min_calls, threshold.
# `count` failures at once (the background task merges a replica's queued failures), after
# `ok` successes the replica saw before them, which only the rate window counts. Every failure
# counts (the count is "failures since the last success"). A failure in the half-open state,
# reaching fail_max while closed, or (window_ms > 0) a window of at least min_calls calls whose
# failed share reaches threshold, opens the breaker for a new period: the lease of the
# previous half-open period is void, and the window starts afresh.
_FAILURE = """
local fail_max, ttl_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local count, ok, window_ms = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local now = now_ms()
local state, failures, successes, opened_at, repaired = load(KEYS[1], now)
failures = failures + count
local tripped = ''
if state == 'half_open' then
  tripped = 'probe'
elseif state == 'closed' then
  local calls, failed = 0, 0
  if window_ms > 0 then
    calls, failed, repaired = window_add(KEYS[3], now, window_ms, ok + count, count, repaired)
  end
  if failures >= fail_max then
    tripped = 'consecutive'
  elseif window_ms > 0 and calls >= tonumber(ARGV[8]) and failed / calls >= tonumber(ARGV[9]) then
    tripped = 'failure_rate'
  end
end
if tripped ~= '' then
  state, successes, opened_at = 'open', 0, now
  redis.call('DEL', KEYS[2], KEYS[3])
end
if ARGV[4] == '1' then repaired = release(KEYS[2], ARGV[3], repaired) end
store(KEYS[1], ttl_ms, state, failures, successes, opened_at)
return reply(state, failures, successes, opened_at, now, 0, repaired, tripped)
"""

# ARGV: success_threshold, ttl_ms, owner, was_probe (0/1), ok, window_ms.
# While open, a success is from a call that began before the breaker opened: it says nothing
# about the provider now, so it changes nothing. While closed, the `ok` successes this one
# closes (it included) go into the rate window when there is one (window_ms > 0).
_SUCCESS = """
local threshold, ttl_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local ok, window_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local state, failures, successes, opened_at, repaired = load(KEYS[1], now)
if state == 'closed' then
  failures = 0
  if window_ms > 0 and ok > 0 then
    local _
    _, _, repaired = window_add(KEYS[3], now, window_ms, ok, 0, repaired)
  end
elseif state == 'half_open' then
  successes = successes + 1
  if successes >= threshold then
    state, failures, successes, opened_at = 'closed', 0, 0, 0
    redis.call('DEL', KEYS[2])
  end
end
if ARGV[4] == '1' then repaired = release(KEYS[2], ARGV[3], repaired) end
store(KEYS[1], ttl_ms, state, failures, successes, opened_at)
return reply(state, failures, successes, opened_at, now, 0, repaired)
"""

# ARGV: reset_timeout_ms, lease_ms, owner, ttl_ms.
# Moves an open breaker whose reset timeout has passed to half-open, then hands the probe
# lease to the caller if no other replica holds it (SET NX: exactly one winner). A request for
# a lease is no outcome: a malformed record is left for FAILURE or SUCCESS to overwrite.
_ACQUIRE_PROBE = """
local reset_ms, lease_ms, ttl_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local now = now_ms()
local state, failures, successes, opened_at = read(KEYS[1], now)
if state == nil then return redis.error_reply('MALFORMED ' .. failures) end
if state == 'open' and not forced(KEYS[1]) and now - opened_at >= reset_ms then
  state, successes = 'half_open', 0
  redis.call('DEL', KEYS[2])
  store(KEYS[1], ttl_ms, state, failures, successes, opened_at)
end
local granted, repaired = 0, ''
if state == 'half_open' then
  repaired = clear_bad_lease(KEYS[2], repaired)
  if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', lease_ms) then granted = 1 end
end
return reply(state, failures, successes, opened_at, now, granted, repaired)
"""

# ARGV: ok, window_ms.  Successes a replica saw since its last turn, for the rate window
# (only while closed). Not an outcome for the record: a malformed one is left for FAILURE or
# SUCCESS to overwrite.
_TALLY = """
local now = now_ms()
local state, failures, successes, opened_at = read(KEYS[1], now)
if state == nil then return redis.error_reply('MALFORMED ' .. failures) end
local repaired = ''
if state == 'closed' and tonumber(ARGV[2]) > 0 then
  local _
  _, _, repaired = window_add(KEYS[3], now, tonumber(ARGV[2]), tonumber(ARGV[1]), 0, repaired)
end
return reply(state, failures, successes, opened_at, now, 0, repaired)
"""

# ARGV: owner.  Gives back a lease this replica holds but will not use.
_RELEASE_PROBE = """
local repaired = release(KEYS[2], ARGV[1], '')
local now = now_ms()
local state, failures, successes, opened_at = read(KEYS[1], now)
if state == nil then return redis.error_reply('MALFORMED ' .. failures) end
return reply(state, failures, successes, opened_at, now, 0, repaired)
"""


# ARGV: (none).  An operator drains the provider: open now, whatever the record said, with
# no lease and no window, and kept open (no probe, no expiry) until RESET.
_FORCE_OPEN = """
local now = now_ms()
local state, failures, successes, opened_at, repaired = load(KEYS[1], now)
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'state', 'open', 'failures', failures, 'successes', 0,
           'opened_at', now, 'forced', '1')
redis.call('PERSIST', KEYS[1])
return reply('open', failures, 0, now, now, 0, repaired)
"""

# ARGV: (none).  An operator closes the breaker with clean counts (lifting a forced opening).
_RESET = """
local now = now_ms()
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return reply('closed', 0, 0, 0, now, 0, '')
"""


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        # Redis names a loaded script by the SHA-1 of its source; EVALSHA sends only that.
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


SNAPSHOT = Script("snapshot", _PRELUDE + _SNAPSHOT)
FAILURE = Script("failure", _PRELUDE + _FAILURE)
SUCCESS = Script("success", _PRELUDE + _SUCCESS)
ACQUIRE_PROBE = Script("acquire_probe", _PRELUDE + _ACQUIRE_PROBE)
RELEASE_PROBE = Script("release_probe", _PRELUDE + _RELEASE_PROBE)
TALLY = Script("tally", _PRELUDE + _TALLY)
FORCE_OPEN = Script("force_open", _PRELUDE + _FORCE_OPEN)
RESET = Script("reset", _PRELUDE + _RESET)

ALL_SCRIPTS = (SNAPSHOT, FAILURE, SUCCESS, ACQUIRE_PROBE, RELEASE_PROBE, TALLY, FORCE_OPEN, RESET)
