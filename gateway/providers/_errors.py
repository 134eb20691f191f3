"""Pieces every provider's error mapping shares: status → kind, Retry-After, transport errors.

Each codec says what its protocol's error responses mean, and each transport what its own
failures mean; these helpers keep both short and the taxonomy the same across providers, and
`mapped_by` applies one mapping around a call.
"""

from __future__ import annotations

import email.utils
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import msgspec
from pydantic import ValidationError

from gateway._secrets import mask_text, masked_as, scrub_text
from gateway.errors import ErrorKind, ProviderError
from gateway.types import Usage, content_text

log = logging.getLogger("gateway")

MAX_ANSWER_TOKENS = 10**9
"""More tokens than this in one answer's usage cannot be true (no model reads or writes a
billion tokens in one call): such usage is treated as unknown rather than billed."""

_untrue_usage_seen: set[str] = set()
"""Providers whose untrue usage has been logged: once each (their number is the policy's)."""

_STATUS_KINDS: dict[int, ErrorKind] = {
    400: ErrorKind.BAD_REQUEST,
    401: ErrorKind.AUTH,
    403: ErrorKind.AUTH,
    404: ErrorKind.NOT_FOUND,
    408: ErrorKind.TIMEOUT,
    413: ErrorKind.CONTEXT_LENGTH,
    422: ErrorKind.BAD_REQUEST,
    429: ErrorKind.RATE_LIMIT,
    503: ErrorKind.OVERLOADED,
    529: ErrorKind.OVERLOADED,
}

# Structured error `type`/`code` values the upstreams send, in bodies and in-stream error events.
_TYPE_KINDS: dict[str, ErrorKind] = {
    "invalid_request_error": ErrorKind.BAD_REQUEST,
    "authentication_error": ErrorKind.AUTH,
    "permission_error": ErrorKind.AUTH,
    "invalid_api_key": ErrorKind.AUTH,
    "not_found_error": ErrorKind.NOT_FOUND,
    "model_not_found": ErrorKind.NOT_FOUND,
    "request_too_large": ErrorKind.CONTEXT_LENGTH,
    "context_length_exceeded": ErrorKind.CONTEXT_LENGTH,
    "content_filter": ErrorKind.CONTENT_FILTER,
    "rate_limit_error": ErrorKind.RATE_LIMIT,
    "rate_limit_exceeded": ErrorKind.RATE_LIMIT,
    "requests": ErrorKind.RATE_LIMIT,
    "tokens": ErrorKind.RATE_LIMIT,
    "timeout_error": ErrorKind.TIMEOUT,
    "timeout": ErrorKind.TIMEOUT,
    "api_error": ErrorKind.SERVER_ERROR,
    "server_error": ErrorKind.SERVER_ERROR,
    "internal_error": ErrorKind.SERVER_ERROR,
    "overloaded_error": ErrorKind.OVERLOADED,
    "overloaded": ErrorKind.OVERLOADED,
    "service_unavailable": ErrorKind.OVERLOADED,
    "service_unavailable_error": ErrorKind.OVERLOADED,
}

# Normalised finish reasons, so callers need not know each upstream's words.
_FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

MAX_MESSAGE_CHARS = 200
_MIN_REDACTED_CHARS = 8  # shorter prompt texts are common words, not worth hiding


def mapped_by(to_error: Callable[[Exception], ProviderError | None]) -> _MappedBy:
    """A `with` block in which an exception `to_error` maps is raised as its `ProviderError`.

    The mapped error chains the original (`raise ... from`). An exception `to_error` maps to
    None is not an upstream failure but a bug, and passes unchanged to be seen as is.
    """
    return _MappedBy(to_error)


class _MappedBy:
    def __init__(self, to_error: Callable[[Exception], ProviderError | None]) -> None:
        self._to_error = to_error

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Only Exception: cancellation and a closed generator's exit are not failures.
        if isinstance(exc, Exception):
            error = self._to_error(exc)
            if error is not None:
                raise error from exc


def kind_for_status(status: int) -> ErrorKind:
    """The kind an HTTP error status means on its own, without the body."""
    kind = _STATUS_KINDS.get(status)
    if kind is not None:
        return kind
    if status >= 500:
        return ErrorKind.SERVER_ERROR
    if 400 <= status < 500:
        return ErrorKind.BAD_REQUEST
    return ErrorKind.INVALID_RESPONSE


def kind_for_error_type(*names: object) -> ErrorKind | None:
    """The kind a structured error type or code names (first known one wins), if any."""
    for name in names:
        if isinstance(name, str) and name in _TYPE_KINDS:
            return _TYPE_KINDS[name]
    return None


def transport_kind(exc: BaseException) -> ErrorKind | None:
    """TIMEOUT, CONNECTION or INVALID_RESPONSE for a raw httpx/httpx2/anyio failure, else None.

    Those libraries come only with the SDKs and LiteLLM: an exception cannot be one of their
    classes unless they are loaded, so they are looked up rather than imported here.
    """
    if isinstance(exc, TimeoutError):
        return ErrorKind.TIMEOUT
    for name in ("httpx", "httpx2"):
        httpx = sys.modules.get(name)
        if httpx is None:
            continue
        if isinstance(exc, httpx.TimeoutException):
            return ErrorKind.TIMEOUT
        if isinstance(exc, httpx.DecodingError):
            return ErrorKind.INVALID_RESPONSE
        if isinstance(exc, httpx.TransportError):
            return ErrorKind.CONNECTION
    anyio = sys.modules.get("anyio")
    # anyio's and the OS's own errors can escape an SDK's stream parser unwrapped.
    if anyio is not None and isinstance(exc, anyio.EndOfStream | anyio.BrokenResourceError):
        return ErrorKind.CONNECTION
    if isinstance(exc, ConnectionError):
        return ErrorKind.CONNECTION
    return None


_decode_json = msgspec.json.Decoder().decode


def parse_untrusted_json(data: str | bytes) -> Any:
    """`json.loads` for what an upstream, a model or a caller sent: every way it fails is a
    `ValueError`, which each caller already reads as "not the JSON it should be".

    msgspec parses first: every answer and every stream event is parsed here, and it does so
    about three times faster, with the same values (integers of any size stay integers; orjson
    would make a float of one past 64 bits). What it refuses (besides bad JSON: NaN and
    Infinity, numbers past a float's range, lone surrogates) goes to `json.loads`, so what
    is accepted, and the error a refusal raises, are the standard library's. There, bad
    JSON, bad UTF-8 and an integer past the interpreter's digit limit raise ValueError
    already; nesting too deep raises RecursionError (from either), which would slip past
    every `except ValueError` and end the whole request instead of failing one candidate.
    """
    try:
        try:
            return _decode_json(data)
        except msgspec.MsgspecError:
            return json.loads(data)
    except RecursionError as exc:  # from either
        raise ValueError("JSON nested too deeply to parse") from exc


def checked_usage(usage: Usage, *, provider: str) -> Usage:
    """An upstream's `usage` as it may be billed: a negative count is 0, and a count past
    `MAX_ANSWER_TOKENS` makes the whole usage unknown (all 0), so a hostile or broken upstream
    can neither refund itself nor add 2e24 USD to the cost counter. Logged once per provider.
    """
    counts = (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens)
    if all(0 <= count <= MAX_ANSWER_TOKENS for count in counts):
        return usage  # every sane answer: no copy
    if any(count > MAX_ANSWER_TOKENS for count in counts):
        checked = Usage()
        what = f"more than {MAX_ANSWER_TOKENS} tokens: not billed"
    else:
        checked = Usage(*(max(0, count) for count in counts))
        what = "negative token counts: counted as 0"
    if provider not in _untrue_usage_seen:
        _untrue_usage_seen.add(provider)
        log.warning(
            "provider %s reported usage with %s (input=%s output=%s cached=%s); "
            "logged once per provider",
            provider,
            what,
            *(count if abs(count) < 10**12 else f"{count:.3g}" for count in counts),
        )
    return checked


def is_malformed_body(exc: BaseException) -> bool:
    """A body that is not the JSON the protocol promises (decode or schema failure).

    An SDK parses bodies with `json.loads` itself, so its hostile-body failures arrive raw:
    RecursionError for deep nesting, a plain ValueError for an over-long integer.
    """
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return True
    return isinstance(
        exc, json.JSONDecodeError | ValidationError | UnicodeDecodeError | RecursionError
    )


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The upstream's wait hint: `retry-after-ms`, or `Retry-After` as seconds or an HTTP date."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def finish_reason(raw: str | None) -> str | None:
    """The upstream's finish reason in OpenAI's words (stop, length, tool_calls, content_filter)."""
    if raw is None:
        return None
    return _FINISH_REASONS.get(raw, raw)


class Redactor:
    """Removes the API key, the prompt's texts and anything that looks like a credential
    (`gateway._secrets.mask_text`) from upstream error text before we show it.

    Upstreams sometimes echo a (masked or not) key or part of the request in their messages;
    our errors end up in logs and API responses, so neither may pass through.
    """

    __slots__ = ("_messages", "_secrets", "_texts")

    def __init__(self, secrets: Iterable[str | None] = (), messages: Iterable[Any] = ()) -> None:
        # Kept as given and read only when an error needs cleaning: most calls have none.
        self._secrets, self._messages = secrets, messages
        self._texts: dict[str, str] | None = None

    def _removed(self) -> dict[str, str]:
        texts = [s for s in self._secrets if s]
        for message in self._messages:
            if isinstance(message, Mapping):
                text = content_text(message.get("content"))
                if len(text) >= _MIN_REDACTED_CHARS:
                    texts.append(text)
        return masked_as(texts, "[redacted]")

    def __call__(self, text: object) -> str:
        if self._texts is None:
            self._texts = self._removed()
        # The texts known to be secret first, then whatever else looks like a credential (a URL
        # with a token in it, `Bearer ...`): the upstream may echo secrets it was not sent by us.
        clean = mask_text(scrub_text(" ".join(str(text).split()), self._texts))
        if len(clean) > MAX_MESSAGE_CHARS:
            clean = clean[: MAX_MESSAGE_CHARS - 3] + "..."
        return clean


def provider_error(
    message: str,
    kind: ErrorKind,
    *,
    provider: str,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> ProviderError:
    return ProviderError(
        message,
        kind=kind,
        provider=provider,
        status=status,
        retry_after_s=retry_after_seconds(headers),
    )


def transport_error(exc: BaseException, kind: ErrorKind, *, provider: str) -> ProviderError:
    """A failure with no HTTP response: named by its exception class, never by its text."""
    what = {
        ErrorKind.TIMEOUT: "upstream did not answer in time",
        ErrorKind.CONNECTION: "connection to upstream failed or was cut",
        ErrorKind.INVALID_RESPONSE: "upstream response could not be decoded",
    }.get(kind, "upstream call failed")
    return ProviderError(f"{what} ({type(exc).__name__})", kind=kind, provider=provider)


def connection_error(exc: BaseException, *, provider: str, timed_out: bool) -> ProviderError:
    """An SDK's connection failure (a timeout if `timed_out`), named by the one it wraps.

    Over the SDKs' aiohttp adapter the failure aiohttp raised decides: the adapter reports
    every dropped connection as a connect *timeout*, which would make a reset look like a
    hung upstream.
    """
    for link in exception_chain(exc):
        kind = aiohttp_kind(link)
        if kind is not None:
            return transport_error(link, kind, provider=provider)
    cause = exc.__cause__
    if timed_out:
        return transport_error(cause or exc, ErrorKind.TIMEOUT, provider=provider)
    kind = transport_kind(cause) if cause else None
    return transport_error(cause or exc, kind or ErrorKind.CONNECTION, provider=provider)


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it wraps, outermost first: what it was raised from, else what
    it was raised while handling (LiteLLM keeps its wrapped one in `original_exception`)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not other for other in seen):
        seen.append(current)
        yield current
        current = (
            current.__cause__ or getattr(current, "original_exception", None) or current.__context__
        )


def aiohttp_kind(exc: BaseException) -> ErrorKind | None:
    """TIMEOUT or CONNECTION for an aiohttp client failure, else None.

    Looked up rather than imported, as in `transport_kind`: this module serves providers that
    never load aiohttp (LiteLLM's, a plugin's).
    """
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is None:
        return None
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return ErrorKind.TIMEOUT
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return ErrorKind.CONNECTION
    return None


def unwrapped_error(exc: BaseException, *, provider: str) -> ProviderError | None:
    """For a failure no SDK wrapped: a transport error or a malformed body; None for any other.

    Raw httpx/anyio errors and decoding errors can escape an SDK's stream parser as they are.
    """
    kind = transport_kind(exc)
    if kind is not None:
        return transport_error(exc, kind, provider=provider)
    if is_malformed_body(exc):
        return malformed_error(exc, provider=provider)
    return None


def malformed_error(exc: BaseException, *, provider: str) -> ProviderError:
    return ProviderError(
        f"upstream sent a body that is not valid for its protocol ({type(exc).__name__})",
        kind=ErrorKind.INVALID_RESPONSE,
        provider=provider,
    )


def truncated_stream_error(*, provider: str) -> ProviderError:
    return ProviderError(
        "stream ended before the upstream said it was finished",
        kind=ErrorKind.CONNECTION,
        provider=provider,
    )


def content_filter_error(*, provider: str, reason: str) -> ProviderError:
    return ProviderError(
        f"upstream refused to answer (finish reason {reason!r})",
        kind=ErrorKind.CONTENT_FILTER,
        provider=provider,
    )


def oversized_error(what: str, limit: int, *, provider: str) -> ProviderError:
    """An answer past the provider's size bound: not what the protocol promises, so
    `invalid_response`, which moves on to the next candidate."""
    return ProviderError(
        f"upstream {what} is larger than max_response_bytes allows ({limit} bytes)",
        kind=ErrorKind.INVALID_RESPONSE,
        provider=provider,
    )
