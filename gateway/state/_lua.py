"""The Lua scripts that read and change one shared breaker atomically inside Redis.

A breaker is a hash `{state, failures, successes, opened_at}` (opened_at in ms of Redis's own
clock, so replicas whose clocks disagree still agree on when a breaker may be probed) plus a
probe lease key holding the token of the one replica allowed to probe while half-open.
A closed breaker with no failures is no key at all.

Every script answers with the breaker as it stands afterwards:
`{state, failures, successes, open_for_ms, granted}`. open_for_ms is measured on Redis's clock
for the same reason; granted is 1 only when ACQUIRE_PROBE gave this caller the lease.

KEYS[1] is the hash, KEYS[2] the lease; both carry the same hash tag so that a Redis Cluster
keeps them on one slot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function load(key)
  local v = redis.call('HMGET', key, 'state', 'failures', 'successes', 'opened_at')
  return v[1] or 'closed', tonumber(v[2]) or 0, tonumber(v[3]) or 0, tonumber(v[4]) or 0
end

local function store(key, ttl_ms, state, failures, successes, opened_at)
  if state == 'closed' and failures == 0 then
    redis.call('DEL', key)
    return
  end
  redis.call('HSET', key, 'state', state, 'failures', failures,
             'successes', successes, 'opened_at', opened_at)
  redis.call('PEXPIRE', key, ttl_ms)
end

local function release(lease_key, owner)
  if redis.call('GET', lease_key) == owner then
    redis.call('DEL', lease_key)
  end
end

local function reply(state, failures, successes, opened_at, now, granted)
  local open_for = 0
  if state ~= 'closed' then open_for = math.max(0, now - opened_at) end
  return {state, failures, successes, open_for, granted}
end
"""

# KEYS: hash, lease.  ARGV: (none)
_SNAPSHOT = """
local state, failures, successes, opened_at = load(KEYS[1])
return reply(state, failures, successes, opened_at, now_ms(), 0)
"""

# ARGV: fail_max, ttl_ms, owner, was_probe (0/1), count.
# `count` failures at once (the background task merges a replica's queued failures). Every
# failure counts (the count is "failures since the last success"). A failure in the
# half-open state, or reaching fail_max while closed, opens the breaker for a new period:
# the lease of the previous half-open period is void.
_FAILURE = """
local fail_max, ttl_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
local state, failures, successes, opened_at = load(KEYS[1])
failures = failures + tonumber(ARGV[5])
if state == 'half_open' or (state == 'closed' and failures >= fail_max) then
  state, successes, opened_at = 'open', 0, now
  redis.call('DEL', KEYS[2])
end
if ARGV[4] == '1' then release(KEYS[2], ARGV[3]) end
store(KEYS[1], ttl_ms, state, failures, successes, opened_at)
return reply(state, failures, successes, opened_at, now, 0)
"""

# ARGV: success_threshold, ttl_ms, owner, was_probe (0/1).
# While open, a success is from a call that began before the breaker opened: it says nothing
# about the provider now, so it changes nothing.
_SUCCESS = """
local threshold, ttl_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
local state, failures, successes, opened_at = load(KEYS[1])
if state == 'closed' then
  failures = 0
elseif state == 'half_open' then
  successes = successes + 1
  if successes >= threshold then
    state, failures, successes, opened_at = 'closed', 0, 0, 0
    redis.call('DEL', KEYS[2])
  end
end
if ARGV[4] == '1' then release(KEYS[2], ARGV[3]) end
store(KEYS[1], ttl_ms, state, failures, successes, opened_at)
return reply(state, failures, successes, opened_at, now, 0)
"""

# ARGV: reset_timeout_ms, lease_ms, owner, ttl_ms.
# Moves an open breaker whose reset timeout has passed to half-open, then hands the probe
# lease to the caller if no other replica holds it (SET NX: exactly one winner).
_ACQUIRE_PROBE = """
local reset_ms, lease_ms, ttl_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local now = now_ms()
local state, failures, successes, opened_at = load(KEYS[1])
if state == 'open' and now - opened_at >= reset_ms then
  state, successes = 'half_open', 0
  redis.call('DEL', KEYS[2])
  store(KEYS[1], ttl_ms, state, failures, successes, opened_at)
end
local granted = 0
if state == 'half_open' and redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', lease_ms) then
  granted = 1
end
return reply(state, failures, successes, opened_at, now, granted)
"""

# ARGV: owner.  Gives back a lease this replica holds but will not use.
_RELEASE_PROBE = """
release(KEYS[2], ARGV[1])
local state, failures, successes, opened_at = load(KEYS[1])
return reply(state, failures, successes, opened_at, now_ms(), 0)
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

ALL_SCRIPTS = (SNAPSHOT, FAILURE, SUCCESS, ACQUIRE_PROBE, RELEASE_PROBE)
