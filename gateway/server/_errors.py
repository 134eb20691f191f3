"""Every failure as OpenAI's error body `{"error": {"message", "type", "param", "code"}}`.

The status follows the exception type: the caller's mistake 400, an unknown task 404, a
request every candidate refused as sent the upstream's own 4xx (400, 404, 413, 422), every
provider failed 502 (with the attempts), the deadline ran out 504. A 4xx carries
`x-should-retry: false`, since sending it again cannot help. The messages come from our
own exceptions, which carry no keys and no prompt text.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import (
    AllProvidersFailed,
    DeadlineExceeded,
    InvalidRequestError,
    PolicyError,
    RequestRefused,
    RoutingError,
    StreamInterrupted,
    UnknownTaskError,
)
from gateway.server._openai_compat import AttemptReport, ErrorDetail, ErrorResponse
from gateway.types import Attempt

log = logging.getLogger("gateway.server")

# The longest part of a client's own value quoted back in a validation error.
_QUOTE_CHARS = 80

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    500: "server_error",
    502: "upstream_error",
    503: "server_error",
    504: "timeout_error",
}


def error_body(
    message: str,
    *,
    status: int,
    code: str | None = None,
    param: str | None = None,
    attempts: Sequence[Attempt] | None = None,
) -> dict[str, Any]:
    detail = ErrorDetail(
        message=message,
        type=ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
        param=param,
        code=code,
        attempts=None if attempts is None else [AttemptReport.of(a) for a in attempts],
    )
    body = ErrorResponse(error=detail).model_dump(mode="json")
    if attempts is None:  # only routing failures have attempts; other errors keep OpenAI's 4 keys
        del body["error"]["attempts"]
    return body


def error_response(
    message: str,
    *,
    status: int,
    code: str | None = None,
    param: str | None = None,
    attempts: Sequence[Attempt] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = error_body(message, status=status, code=code, param=param, attempts=attempts)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def routing_failure(exc: Exception) -> tuple[int, dict[str, Any]] | None:
    """(status, body) for an exception the router raises on purpose; None for anything else."""
    if isinstance(exc, UnknownTaskError):
        return 404, _body(exc, 404, "model_not_found", "model")
    if isinstance(exc, InvalidRequestError):
        return 400, _body(exc, 400, "invalid_request", None)
    if isinstance(exc, DeadlineExceeded):
        return 504, _body(exc, 504, "deadline_exceeded", None, exc.attempts)
    if isinstance(exc, RequestRefused):
        # Upstream 4xx (or no candidate could honour a field): the request itself is refused.
        return exc.status, _body(exc, exc.status, "request_refused", None, exc.attempts)
    if isinstance(exc, StreamInterrupted):
        return 502, _body(exc, 502, "stream_interrupted", None, exc.attempts)
    if isinstance(exc, AllProvidersFailed):
        return 502, _body(exc, 502, "all_providers_failed", None, exc.attempts)
    if isinstance(exc, RoutingError):
        return 502, _body(exc, 502, "routing_failed", None, exc.attempts)
    if isinstance(exc, PolicyError):
        return 422, _body(exc, 422, "invalid_policy", exc.path or None)
    return None


NO_RETRY = {"x-should-retry": "false"}
"""Set on answers a retry cannot change (the OpenAI and Anthropic SDKs read it)."""


def failure_headers(status: int) -> dict[str, str] | None:
    """Headers for a routing failure's answer: a 4xx says the same request will fail again."""
    return NO_RETRY if 400 <= status < 500 else None


def _body(
    exc: Exception,
    status: int,
    code: str,
    param: str | None,
    attempts: Sequence[Attempt] | None = None,
) -> dict[str, Any]:
    return error_body(str(exc), status=status, code=code, param=param, attempts=attempts)


def internal_error_body() -> dict[str, Any]:
    return error_body(
        "the gateway failed unexpectedly; the server log has the details",
        status=500,
        code="internal_error",
    )


# --- request validation -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestVocabulary:
    """What the names in a validation error's location can be."""

    fields: frozenset[str]
    """Field names of the request models."""
    tags: frozenset[str]
    """Discriminator values, which pydantic inserts after a list index (`messages.0.user`)."""


def _param(
    loc: Sequence[str | int], words: RequestVocabulary, *, unknown_last: bool = False
) -> str | None:
    """`messages[0].content` from pydantic's location, leaving out union branch labels.

    `unknown_last`: the last item is a field the client sent that the model does not have.
    """
    if len(loc) == 2 and loc[0] in {"header", "query", "path"}:
        return str(loc[1])
    items = list(loc[1:] if loc and loc[0] == "body" else loc)
    parts: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif i > 0 and isinstance(items[i - 1], int) and item in words.tags:
            continue  # the branch of a discriminated union, not a field
        elif item in words.fields or (unknown_last and i == len(items) - 1):
            parts.append(("." if parts else "") + item)
    return "".join(parts) or None


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 3] + "..."


def validation_message(
    errors: Sequence[Mapping[str, Any]], words: RequestVocabulary, content_type: str | None
) -> tuple[str, str | None]:
    """One readable message for FastAPI's validation errors, and the field it is about."""
    first = errors[0]
    kind = first.get("type", "")
    if kind == "json_invalid":
        ctx = first.get("ctx") or {}
        reason = ctx.get("error", "malformed JSON")
        return f"the request body is not valid JSON ({reason}); send a JSON object", None
    loc = list(first.get("loc", ()))
    if loc == ["body"] and isinstance(first.get("input"), bytes):
        # FastAPI parses the body as JSON only when the content type says it is JSON.
        return (
            f"the request body was sent as {content_type or 'no content type'!s}; send a JSON "
            "object with the header 'content-type: application/json'"
        ), None
    param = _param(loc, words, unknown_last=kind == "extra_forbidden")
    if kind == "missing" and param is None:
        return "the request body is missing; send a JSON object", None
    where = param or "the request body"
    message = f"{where}: {first.get('msg', 'invalid value')}"
    if kind not in {"missing", "extra_forbidden"} and "input" in first:
        message += f" (got {_quote(first['input'])})"
    if kind == "extra_forbidden":
        message += "; remove it (this gateway passes on only the fields in its OpenAPI schema)"
    more = len(errors) - 1
    if more:
        message += f"; and {more} more problem{'s' if more > 1 else ''}"
    return message, param


def install_handlers(app: Any, words: RequestVocabulary) -> None:
    """Make FastAPI's own errors (validation, 404, 405) speak OpenAI's error shape."""

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        content_type = request.headers.get("content-type")
        message, param = validation_message(exc.errors(), words, content_type)
        return error_response(message, status=400, code="invalid_request", param=param)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if status == 404:
            message = f"no route {request.url.path!r}; see /openapi.json for the routes"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.url.path!r}"
        return error_response(message, status=status, code=_http_code(status), headers=exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # %r: the path is the client's, and repr() escapes line breaks and other controls.
        log.error("unhandled error on %s %r", request.method, request.url.path, exc_info=exc)
        return JSONResponse(internal_error_body(), status_code=500)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def _http_code(status: int) -> str:
    return {
        404: "not_found",
        405: "method_not_allowed",
        413: "request_too_large",
        415: "unsupported_media_type",
    }.get(status, "http_error")
