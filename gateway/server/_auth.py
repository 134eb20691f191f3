"""Bearer-key checks for client and admin routes, and the loopback rule for keyless serving.

Keys are compared as SHA-256 digests with `hmac.compare_digest`, against every configured key
without stopping at a match, so neither a key's length nor its position in the list shows in
the time an answer takes.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from enum import Enum

from gateway.server._config import ADMIN_KEYS_ENV, API_KEYS_ENV, ServerSettings

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


# Asked on every request in open mode; a client's address rarely changes between its requests.
@functools.lru_cache(maxsize=1024)
def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; a wildcard or any other name is not."""
    if not host:
        return False
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _matches(candidate: bytes, known: tuple[bytes, ...]) -> bool:
    found = False
    for digest in known:
        found |= hmac.compare_digest(candidate, digest)
    return found


class Access(Enum):
    GRANTED = "granted"
    MISSING = "missing"  # no bearer key sent (401)
    UNKNOWN = "unknown"  # a key that is not configured (401)
    FORBIDDEN = "forbidden"  # a valid client key on an admin route (403)
    ADMIN_DISABLED = "admin_disabled"  # no admin keys configured (403)


@dataclass(frozen=True, slots=True)
class Denial:
    status: int
    code: str
    message: str


class KeyChecker:
    """Decides whether a request's bearer key opens a client or an admin route.

    Open mode (no `GATEWAY_API_KEYS`): client routes need no key, but only for clients that
    connect over loopback, and admin routes too when no admin keys are set either; `serve`
    refuses to listen on anything but loopback in that mode.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self._client = tuple(_digest(k) for k in settings.api_keys)
        self._admin = tuple(_digest(k) for k in settings.admin_keys)

    def __repr__(self) -> str:
        return f"KeyChecker(client_keys={len(self._client)}, admin_keys={len(self._admin)})"

    @property
    def open_mode(self) -> bool:
        return not self._client

    def client(self, key: str | None, peer_host: str | None) -> Access:
        if self.open_mode:
            if is_loopback(peer_host):
                return Access.GRANTED
            return Access.MISSING if key is None else self._known(key, admin_only=False)
        if key is None:
            return Access.MISSING
        return self._known(key, admin_only=False)

    def admin(self, key: str | None, peer_host: str | None) -> Access:
        if not self._admin:
            if self.open_mode and is_loopback(peer_host):
                return Access.GRANTED
            return Access.ADMIN_DISABLED
        if key is None:
            return Access.MISSING
        return self._known(key, admin_only=True)

    def _known(self, key: str, *, admin_only: bool) -> Access:
        digest = _digest(key)
        is_admin = _matches(digest, self._admin)
        if admin_only:
            if is_admin:
                return Access.GRANTED
            return Access.FORBIDDEN if _matches(digest, self._client) else Access.UNKNOWN
        # An admin key opens client routes too: operators need not carry two keys.
        is_client = _matches(digest, self._client)
        return Access.GRANTED if (is_client or is_admin) else Access.UNKNOWN


BEARER_HEADER = "'Authorization: Bearer <key>'"
API_KEY_HEADERS = "'x-api-key: <key>' (or 'Authorization: Bearer <key>')"
"""How a client of Anthropic's Messages route may send its key (the anthropic SDK sends
x-api-key)."""


def denial(access: Access, *, header: str = BEARER_HEADER) -> Denial:
    """The status and the message that says how to get in (`header`: how to send a key)."""
    if access is Access.MISSING:
        return Denial(
            401,
            "missing_api_key",
            f"no API key: send the header {header} with a key from {API_KEYS_ENV}",
        )
    if access is Access.UNKNOWN:
        return Denial(
            401,
            "invalid_api_key",
            f"the API key is not one of the server's keys; use a key listed in {API_KEYS_ENV} "
            f"(or {ADMIN_KEYS_ENV} for admin routes)",
        )
    if access is Access.FORBIDDEN:
        return Denial(
            403,
            "admin_key_required",
            f"this route needs an admin key: send a key listed in {ADMIN_KEYS_ENV}",
        )
    return Denial(
        403,
        "admin_disabled",
        f"admin routes are disabled: set {ADMIN_KEYS_ENV} (comma-separated keys) on the server "
        "and send one as 'Authorization: Bearer <key>'",
    )


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header, or None."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return key.strip()


def client_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key of an `x-api-key` header (as Anthropic's clients send it), else of an
    `Authorization: Bearer` header, else None."""
    if x_api_key is not None and x_api_key.strip():
        return x_api_key.strip()
    return bearer_key(authorization)
