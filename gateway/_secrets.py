"""What counts as a secret, and how it is hidden wherever the gateway shows text.

Every place that shows configuration or upstream text goes through here: the policy view
(`GET /api/v1/policy`, the CLI), reprs, logs and error messages. The rules:

- a *name* is secret when it is a credential header (`Authorization`, `x-api-key`, `Cookie`...)
  or ends in key, secret, password, token or credentials (`api_key`, `apiKey`, `client-secret`);
- a *URL* shows neither its user name nor its password (a token is often written as the user
  name: `http://TOKEN@host`), nor the value of a secret-named query parameter (`?api-key=`,
  `?sig=`);
- a *mapping* (provider options, default headers) shows `***` for each secret-named key, at any
  depth, and each URL in it masked as above;
- *free text* (an upstream's error message) has known secret values replaced, then whatever
  still looks like a credential: URLs, `Bearer <token>`, `api_key=<value>`.

The HTTP client libraries and the SDKs log each request's URL as it is, credentials included
(httpx's "HTTP Request: POST http://TOKEN@host/..." at INFO, the SDKs' "Sending HTTP Request" and
the exceptions they log at DEBUG); importing this module gives their loggers a filter that masks
those records, message and traceback, as free text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

MASK = "***"

SHORTEST_SCRUBBED = 4
"""Environment values shorter than this are not scrubbed from a policy's view or its errors:
they cannot hide much of a secret, and replacing them would garble the text around them (a `1`
inside a line number)."""

_SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "x_api_key",
        "api_key",
        "apikey",
        "x_goog_api_key",
        "ocp_apim_subscription_key",
    }
)
# Query parameters that carry a credential under a name the suffix rule below does not catch
# (SAS signatures, short aliases). `key` itself is caught by the suffix rule.
_SECRET_QUERY_NAMES = frozenset({"sig", "signature", "auth", "passwd", "pwd"})
_SECRET_SUFFIX = re.compile(r"(?:^|_)(?:key|secret|password|token|credentials?)$")
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _normalised(name: str) -> str:
    """`x-api-key`, `X_API_KEY` and `xApiKey` all become `x_api_key`."""
    return _CAMEL_HUMP.sub("_", name.strip()).replace("-", "_").replace(".", "_").lower()


def is_secret_name(name: object) -> bool:
    """True for a key, header or parameter name whose value is a credential."""
    if not isinstance(name, str):
        return False
    normal = _normalised(name)
    return normal in _SECRET_HEADERS or _SECRET_SUFFIX.search(normal) is not None


def _is_secret_query_name(name: str) -> bool:
    return is_secret_name(name) or _normalised(name) in _SECRET_QUERY_NAMES


def _masked_query(query: str) -> str:
    """`a=1&api-key=xyz` -> `a=1&api-key=***`, every other byte as written."""
    if not query:
        return query
    pairs = []
    for pair in query.split("&"):
        name, equals, value = pair.partition("=")
        if equals and value and _is_secret_query_name(unquote(name)):
            pair = f"{name}={MASK}"
        pairs.append(pair)
    return "&".join(pairs)


def mask_url(url: str) -> str:
    """`url` with its user name, its password and its secret query parameters shown as ***.

    Everything else is kept byte for byte (`unix:///path` keeps its slashes). A URL that does
    not parse is shown as *** whole: where its secret is cannot be told.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return MASK
    # Split as urlsplit does: the fragment at the first "#", then the query at the first "?".
    head, hash_mark, fragment = url.partition("#")
    head, question_mark, query = head.partition("?")
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        if userinfo + "@" not in head:  # urlsplit dropped characters: positions cannot be trusted
            return MASK
        shown = f"{MASK}:{MASK}" if ":" in userinfo else MASK
        head = head.replace(userinfo + "@", shown + "@", 1)
    # A fragment may carry parameters too (OAuth's `#access_token=...`).
    if "=" in fragment:
        fragment = _masked_query(fragment)
    return head + question_mark + _masked_query(query) + hash_mark + fragment


def _looks_like_url(text: str) -> bool:
    return "://" in text


def mask_tree(tree: Any) -> Any:
    """A JSON-like tree with each secret-named key's value shown as *** (at any depth) and each
    URL in it masked; lists and tuples are walked, everything else is kept as it is."""
    if isinstance(tree, Mapping):
        return {
            key: MASK if is_secret_name(key) and value not in (None, "") else mask_tree(value)
            for key, value in tree.items()
        }
    if isinstance(tree, list | tuple):
        return [mask_tree(item) for item in tree]
    if isinstance(tree, str) and _looks_like_url(tree):
        return mask_url(tree)
    return tree


# --- free text ----------------------------------------------------------------------------------

_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")
# A value that looks like a credential rather than a word: long, and with a digit or a dash or
# underscore in it (`sk-proj-...`, `ghp_...`), so that "key: 'model'" in a message stays as is.
_CREDENTIAL = r"(?=[^\s]*[0-9_-])[A-Za-z0-9._~+/=-]{8,}"
_SCHEMED = re.compile(rf"\b(?P<scheme>Bearer|Basic|Token)\s+{_CREDENTIAL}", re.IGNORECASE)
# `name=value`, `name: value`, `"name": "value"`: the name decides whether the value is secret.
_ASSIGNED = re.compile(
    r"(?P<name>[A-Za-z][\w.-]*)(?P<sep>[\"']?\s*(?P<op>[:=])\s*[\"']?)(?P<value>[^\s\"'&,;)}\]]+)"
)
_CREDENTIAL_ONLY = re.compile(_CREDENTIAL)


def _masked_assignment(match: re.Match[str]) -> str:
    name, value = match.group("name"), match.group("value")
    if value == MASK or not is_secret_name(name):
        return match.group(0)
    # After `=` (a query string, a form) any value is the secret; after `:` in prose only a
    # value that looks like a credential is ("Missing required key: model" stays readable).
    if match.group("op") == "=" or _CREDENTIAL_ONLY.fullmatch(value):
        return f"{name}{match.group('sep')}{MASK}"
    return match.group(0)


def mask_text(text: str) -> str:
    """Free text with what looks like a credential shown as ***: URLs masked by `mask_url`,
    `Bearer <token>`, and the value after a secret name (`api_key=...`, `x-api-key: ...`)."""
    text = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)
    text = _SCHEMED.sub(lambda m: f"{m.group('scheme')} {MASK}", text)
    return _ASSIGNED.sub(_masked_assignment, text)


def scrub_text(text: str, known: Mapping[str, str], *, shortest: int = 1) -> str:
    """`text` with each known secret value (a key of `known`, at least `shortest` long)
    replaced by what `known` maps it to; longest first, so one that contains another goes whole."""
    for value in sorted(known, key=len, reverse=True):
        if len(value) >= shortest and value in text:
            text = text.replace(value, known[value])
    return text


def scrub(tree: Any, known: Mapping[str, str], *, shortest: int = 1) -> Any:
    """A JSON-like tree with `scrub_text` applied to every string in it, keys included."""
    if not known:
        return tree
    if isinstance(tree, str):
        return scrub_text(tree, known, shortest=shortest)
    if isinstance(tree, Mapping):
        return {
            scrub(key, known, shortest=shortest): scrub(value, known, shortest=shortest)
            for key, value in tree.items()
        }
    if isinstance(tree, list | tuple):
        return [scrub(item, known, shortest=shortest) for item in tree]
    return tree


def url_secrets(url: str) -> list[str]:
    """The secret values `url` carries (user name, password, secret query values), so that text
    which repeats them (a client library's error message) can be scrubbed of them."""
    try:
        parts = urlsplit(url)
        found = [parts.username, parts.password]
    except ValueError:
        return []
    found += [unquote(value) for value in found if value]
    for query in (parts.query, parts.fragment):
        for pair in query.split("&"):
            name, equals, value = pair.partition("=")
            if equals and value and _is_secret_query_name(unquote(name)):
                found += [value, unquote(value)]
    return [value for value in found if value]


def masked_as(secrets: Iterable[str | None], shown: str = MASK) -> dict[str, str]:
    """`known` for `scrub_text`: each non-empty secret, replaced by `shown`."""
    return {secret: shown for secret in secrets if secret}


# --- logs -----------------------------------------------------------------------------------------


class MaskingFilter(logging.Filter):
    """A logging filter that masks credentials (`mask_text`) in each record's message and in
    the traceback it carries."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:
            # Formatters print exc_text when it is set rather than formatting exc_info again.
            record.exc_text = mask_text(_TRACEBACKS.formatException(record.exc_info))
        return True


_TRACEBACKS = logging.Formatter()

HTTP_CLIENT_LOGGERS = ("httpx", "httpx2", "openai._base_client", "anthropic._base_client")
"""Loggers that print request URLs: a provider's base_url may carry a token as its user name."""


def mask_logs_of(*names: str) -> None:
    """Give each named logger a `MaskingFilter` (once). A logger's filters see only the records
    it creates itself, so name the logger the library logs to, not a parent."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, MaskingFilter) for f in logger.filters):
            logger.addFilter(MaskingFilter())


mask_logs_of(*HTTP_CLIENT_LOGGERS)
