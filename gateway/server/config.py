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

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_MESSAGES = 1000
DEFAULT_WATCH_S = 1.0


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


def seconds_or_off(environ: Mapping[str, str], name: str, default: float) -> float | None:
    """A number of seconds, where 0 turns the feature off (None)."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ConfigurationError(
            f"{name} is {raw!r}; set it to a number of seconds >= 0 (0 turns it off, "
            f"default {default:g}) or unset it"
        )
    return value or None


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Read once at startup. `repr` never shows the keys, only how many there are."""

    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_messages: int = DEFAULT_MAX_MESSAGES
    policy_watch_s: float | None = DEFAULT_WATCH_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        env = os.environ if environ is None else environ
        return cls(
            api_keys=split_keys(env.get(API_KEYS_ENV)),
            admin_keys=split_keys(env.get(ADMIN_KEYS_ENV)),
            max_body_bytes=positive_int(env, MAX_BODY_BYTES_ENV, DEFAULT_MAX_BODY_BYTES),
            max_messages=positive_int(env, MAX_MESSAGES_ENV, DEFAULT_MAX_MESSAGES),
            policy_watch_s=seconds_or_off(env, WATCH_ENV, DEFAULT_WATCH_S),
        )

    def __repr__(self) -> str:
        return (
            f"ServerSettings(api_keys=<{len(self.api_keys)}>, admin_keys=<{len(self.admin_keys)}>, "
            f"max_body_bytes={self.max_body_bytes}, max_messages={self.max_messages}, "
            f"policy_watch_s={self.policy_watch_s})"
        )

    @property
    def open_mode(self) -> bool:
        """No client keys: anyone who can reach the server may use it (loopback only)."""
        return not self.api_keys
