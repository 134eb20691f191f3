"""The server's environment settings: keys, limits and the policy watch interval."""

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

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_MESSAGES = 1000
DEFAULT_WATCH_S = 1.0
DEFAULT_SHUTDOWN_GRACE_S = 60.0


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
    """How long requests in flight may run on after SIGTERM before they are cancelled."""

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
                zero="cancels requests in flight at once",
            ),
        )

    def __repr__(self) -> str:
        return (
            f"ServerSettings(api_keys=<{len(self.api_keys)}>, admin_keys=<{len(self.admin_keys)}>, "
            f"max_body_bytes={self.max_body_bytes}, max_messages={self.max_messages}, "
            f"policy_watch_s={self.policy_watch_s}, shutdown_grace_s={self.shutdown_grace_s})"
        )

    @property
    def open_mode(self) -> bool:
        """No client keys: anyone who can reach the server may use it (loopback only)."""
        return not self.api_keys
