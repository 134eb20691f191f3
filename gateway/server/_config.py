"""The server's environment settings: keys, limits, connection bounds and the policy watch
interval."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import ConfigurationError

API_KEYS_ENV = "GATEWAY_API_KEYS"
ADMIN_KEYS_ENV = "GATEWAY_ADMIN_KEYS"
MAX_BODY_BYTES_ENV = "GATEWAY_MAX_BODY_BYTES"
MAX_MESSAGES_ENV = "GATEWAY_MAX_MESSAGES"
WATCH_ENV = "GATEWAY_POLICY_WATCH_S"
SHUTDOWN_GRACE_ENV = "GATEWAY_SHUTDOWN_GRACE_S"
HEADER_TIMEOUT_ENV = "GATEWAY_HEADER_TIMEOUT_S"
BODY_TIMEOUT_ENV = "GATEWAY_BODY_TIMEOUT_S"
KEEP_ALIVE_ENV = "GATEWAY_KEEP_ALIVE_S"
MAX_CONNECTIONS_ENV = "GATEWAY_MAX_CONNECTIONS"

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_MESSAGES = 1000
DEFAULT_WATCH_S = 1.0
DEFAULT_SHUTDOWN_GRACE_S = 60.0
# A request head is a few hundred bytes: 10 s is ample on any real link, and bounds a client
# that connects and sends nothing, or trickles its head (slowloris).
DEFAULT_HEADER_TIMEOUT_S = 10.0
# The whole body, not each read, so a client trickling a byte at a time is bounded too:
# 30 s for the 1 MiB limit is about 35 KB/s.
DEFAULT_BODY_TIMEOUT_S = 30.0
# Longer than clients' own idle-connection lifetime (the OpenAI SDK keeps idle connections
# 5 s, as does uvicorn by default): otherwise both close the same idle connection at once and
# the client's next request fails with a connection error.
DEFAULT_KEEP_ALIVE_S = 75.0
# Per process. Well under the usual open-file limit (1024), which each connection and each
# upstream connection it causes count against.
DEFAULT_MAX_CONNECTIONS = 1000


def split_keys(raw: str | None) -> tuple[str, ...]:
    """Comma-separated keys; blanks around and between commas are dropped."""
    if not raw:
        return ()
    return tuple(key.strip() for key in raw.split(",") if key.strip())


def positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigurationError(
            f"{name} is {raw!r}; set it to a whole number >= 1 (default {default}) or unset it"
        )
    return value


def seconds(environ: Mapping[str, str], name: str, default: float, *, zero: str) -> float:
    """A finite number of seconds >= 0; `zero` says what 0 means, for the error message."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ConfigurationError(
            f"{name} is {raw!r}; set it to a number of seconds >= 0 (0 {zero}, "
            f"default {default:g}) or unset it"
        )
    return value


def positive_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    """A finite number of seconds > 0."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ConfigurationError(
            f"{name} is {raw!r}; set it to a number of seconds > 0 (default {default:g}) "
            "or unset it"
        )
    return value


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Read once at startup. `repr` never shows the keys, only how many there are."""

    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_messages: int = DEFAULT_MAX_MESSAGES
    policy_watch_s: float | None = DEFAULT_WATCH_S
    """How often the policy file is checked for changes; None: only SIGHUP or HTTP reload it."""
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    """How long requests in flight may run on after SIGTERM before they are ended."""
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    """How long a connection may take to send a whole request head, from its first byte (or
    from the connection's opening)."""
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    """How long a request's whole body may take to arrive once its head has."""
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S
    """How long a connection may stay idle between requests."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Connections one process serves at once; more are answered 503 and closed."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        env = os.environ if environ is None else environ
        return cls(
            api_keys=split_keys(env.get(API_KEYS_ENV)),
            admin_keys=split_keys(env.get(ADMIN_KEYS_ENV)),
            max_body_bytes=positive_int(env, MAX_BODY_BYTES_ENV, DEFAULT_MAX_BODY_BYTES),
            max_messages=positive_int(env, MAX_MESSAGES_ENV, DEFAULT_MAX_MESSAGES),
            policy_watch_s=seconds(env, WATCH_ENV, DEFAULT_WATCH_S, zero="turns it off") or None,
            shutdown_grace_s=seconds(
                env,
                SHUTDOWN_GRACE_ENV,
                DEFAULT_SHUTDOWN_GRACE_S,
                zero="ends requests in flight at once",
            ),
            header_timeout_s=positive_seconds(env, HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT_S),
            body_timeout_s=positive_seconds(env, BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT_S),
            keep_alive_s=seconds(
                env, KEEP_ALIVE_ENV, DEFAULT_KEEP_ALIVE_S, zero="closes it after each answer"
            ),
            max_connections=positive_int(env, MAX_CONNECTIONS_ENV, DEFAULT_MAX_CONNECTIONS),
        )

    def __repr__(self) -> str:
        return (
            f"ServerSettings(api_keys=<{len(self.api_keys)}>, admin_keys=<{len(self.admin_keys)}>, "
            f"max_body_bytes={self.max_body_bytes}, max_messages={self.max_messages}, "
            f"policy_watch_s={self.policy_watch_s}, shutdown_grace_s={self.shutdown_grace_s}, "
            f"header_timeout_s={self.header_timeout_s}, body_timeout_s={self.body_timeout_s}, "
            f"keep_alive_s={self.keep_alive_s}, max_connections={self.max_connections})"
        )

    @property
    def open_mode(self) -> bool:
        """No client keys: anyone who can reach the server may use it (loopback only)."""
        return not self.api_keys
