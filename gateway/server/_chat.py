"""POST /v1/chat/completions: one OpenAI-style request through the router, whole or streamed.

A stream's response starts only once its first delta is in hand: until then the router may
still fall through to another candidate, and a request that fails before any text answers with
a proper status (502, 504...) instead of an event stream. After that, a failure ends the
stream with an error event (`data: {"error": {...}}`) and no `[DONE]`: `[DONE]` means the
answer is complete. So does the end of the server's shutdown grace (code `server_shutdown`);
a whole answer still in the works then gets 503 with that code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.message
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Protocol, TypeVar

import anyio
from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope

from gateway import AttemptOutcome
from gateway._router import Router
from gateway._streaming import RoutedStream
from gateway.errors import RoutingError
from gateway.server._config import SHUTDOWN_GRACE_ENV
from gateway.server._disconnect import SHUTDOWN, CancelOnDisconnect, ClientGone, ServerShutdown
from gateway.server._errors import error_body, internal_error_body, routing_failure
from gateway.server._middleware import (
    CLIENT_CLOSED,
    AccessRecord,
    BodyTimeout,
    BodyTooLarge,
    attempts_detail,
)
from gateway.server._openai_compat import (
    ChatCompletionRequest,
    ChunkWriter,
    completion_body,
    new_completion_id,
    response_id_for,
)
from gateway.server._sse import (
    DONE,
    EventStreamResponse,
    EventTemplate,
    LastEvents,
    event,
    json_bytes,
)
from gateway.types import Attempt, StreamPiece, ToolCallDelta

log = logging.getLogger("gateway.server")

T = TypeVar("T")

TASK_HEADER = "x-gateway-task"
TASK_HEADER_MAX_LENGTH = 256


# --- reading the request ---------------------------------------------------------------------
#
# The route is a plain Starlette route (see _app.py), not a FastAPI one: it reads and validates
# its request here, the way FastAPI's declaration of it would, with the same errors. The body is
# JSON only when the content type says so, it is validated by the same pydantic model (errors
# located under "body"), and the task header is at most TASK_HEADER_MAX_LENGTH characters
# (located under "header"). Errors are raised as FastAPI's own exceptions, so the app's handlers
# answer them exactly as they answer every other route's.

_REQUEST = TypeAdapter(ChatCompletionRequest)
_TASK_NAME = TypeAdapter(Annotated[str, Field(max_length=TASK_HEADER_MAX_LENGTH)])
_NO_BODY: Any = object()


@dataclass(slots=True)
class RequestHeaders:
    """The headers the route reads (the first of each, as Starlette's `Headers.get`)."""

    content_type: str | None = None
    authorization: str | None = None
    task: str | None = None


_WANTED = {
    b"content-type": "content_type",
    b"authorization": "authorization",
    TASK_HEADER.encode(): "task",
}


def request_headers(scope: Scope) -> RequestHeaders:
    found = RequestHeaders()
    for name, value in scope["headers"]:
        field = _WANTED.get(name)
        if field is not None and getattr(found, field) is None:
            setattr(found, field, value.decode("latin-1"))
    return found


async def read_body(receive: Receive, max_bytes: int, timeout_s: float | None = None) -> bytes:
    """The whole request body; `BodyTooLarge` once it is over `max_bytes` (the rest is not
    read), `ClientGone` if the client leaves before sending all of it, `BodyTimeout` if it has
    not all arrived within `timeout_s` (the whole body, so that a client trickling it a byte at
    a time is bounded too)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > max_bytes:
                    raise BodyTooLarge
                if not message.get("more_body", False):
                    return b"".join([*chunks, chunk]) if chunks else chunk
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout from None


@lru_cache(maxsize=64)
def is_json_content_type(value: str) -> bool:
    """`application/json`, with parameters or any `+json` subtype, as FastAPI decides it."""
    message = email.message.Message()
    message["content-type"] = value
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def parse_request(body: bytes, headers: RequestHeaders) -> ChatCompletionRequest:
    """The validated request, or FastAPI's `RequestValidationError` (answered 400) or
    `HTTPException` (a body that is not text, 400) with the errors FastAPI would raise."""
    value: Any = _NO_BODY
    if body:
        if headers.content_type and is_json_content_type(headers.content_type):
            try:
                value = json.loads(body)
            except json.JSONDecodeError as exc:
                raise RequestValidationError(
                    [
                        {
                            "type": "json_invalid",
                            "loc": ("body", exc.pos),
                            "msg": "JSON decode error",
                            "input": {},
                            "ctx": {"error": exc.msg},
                        }
                    ],
                    body=exc.doc,
                ) from exc
            except Exception as exc:  # not UTF-8/16/32 text
                raise HTTPException(400, "There was an error parsing the body") from exc
        else:  # not sent as JSON: refused below, naming the content type
            value = body
    errors: list[dict[str, Any]] = []
    if headers.task is not None and len(headers.task) > TASK_HEADER_MAX_LENGTH:
        errors.extend(_located(_TASK_NAME, headers.task, ("header", TASK_HEADER)))
    if value is _NO_BODY:
        errors.append({"type": "missing", "loc": ("body",), "msg": "Field required", "input": None})
    else:
        try:
            request = _REQUEST.validate_python(value, from_attributes=True)
        except ValidationError as exc:
            errors.extend(_with_loc(exc, ("body",)))
    if errors:
        raise RequestValidationError(errors, body=None if value is _NO_BODY else value)
    return request


def _located(adapter: TypeAdapter[Any], value: Any, loc: tuple[str, ...]) -> list[dict[str, Any]]:
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        return _with_loc(exc, loc)
    return []


def _with_loc(exc: ValidationError, loc: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{**error, "loc": loc + tuple(error["loc"])} for error in exc.errors(include_url=False)]


# --- answering ------------------------------------------------------------------------------


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects meanwhile (raise `ClientGone`).

    The request body has been read by now, so the next ASGI message can only be the
    disconnect.
    """
    with CancelOnDisconnect(receive):
        return await work


def shutdown_body() -> dict[str, Any]:
    """What a request still in flight gets when the shutdown grace runs out: the error event
    that ends a stream, or a whole answer's 503."""
    return error_body(
        f"the server is shutting down and its grace period ({SHUTDOWN_GRACE_ENV}) ran out "
        "before the answer was complete; send the request again",
        status=503,
        code="server_shutdown",
    )


SERVER_SHUTDOWN = 503


def gateway_headers(
    *, task: str, provider: str | None, attempts: Sequence[Attempt], cost: float | None
) -> dict[str, str]:
    headers = {
        "x-gateway-task": task,
        "x-gateway-attempts": str(len(attempts)),
        "x-gateway-attempts-detail": attempts_detail(attempts),
    }
    if provider is not None:
        headers["x-gateway-provider"] = provider
    if cost is not None:
        headers["x-gateway-cost-usd"] = f"{cost:.8f}"
    return headers


async def chat_completion(
    router: Router,
    body: ChatCompletionRequest,
    *,
    task_header: str | None,
    receive: Receive,
    access: AccessRecord,
) -> Response:
    # Resolving the task up front turns an unknown one into a 404 before any work is done.
    task = router.policy.task(task_header or body.model).name
    access.task = task
    try:
        if body.stream:
            return await _stream(router, body, task, receive, access)
        return await _complete(router, body, task, receive, access)
    except ClientGone:
        access.status, access.outcome = CLIENT_CLOSED, "client_closed"
        return Response(status_code=CLIENT_CLOSED)
    except ServerShutdown:
        access.outcome = "server_shutdown"
        return JSONResponse(
            shutdown_body(), status_code=SERVER_SHUTDOWN, headers={"connection": "close"}
        )
    except RoutingError as exc:
        access.attempts = exc.attempts
        raise


async def _complete(
    router: Router, body: ChatCompletionRequest, task: str, receive: Receive, access: AccessRecord
) -> Response:
    messages, params = body.wire_messages(), body.call_params()
    if body.json_mode:
        # The router checks the answer is a JSON object (and falls through when it is not).
        call = router.complete_json(messages, task=task, **params)
    else:
        call = router.generate(messages, task=task, **params)
    routed = await unless_disconnected(receive, call)
    choices = routed.choices
    if body.json_mode and routed.parsed is not None:
        # The object the router parsed, re-serialised: without the code fence some models
        # put around JSON even in JSON mode.
        text = json.dumps(routed.parsed, ensure_ascii=False)
        choices = (dataclasses.replace(choices[0], text=text), *choices[1:])
    access.answered(routed)
    payload = completion_body(
        response_id=response_id_for(routed.response_id),
        model=routed.model or routed.provider,
        choices=choices,
        usage=routed.usage,
    )
    headers = gateway_headers(
        task=task, provider=routed.provider, attempts=routed.attempts, cost=routed.cost_usd
    )
    return Response(json_bytes(payload), headers=headers, media_type="application/json")


async def _stream(
    router: Router, body: ChatCompletionRequest, task: str, receive: Receive, access: AccessRecord
) -> Response:
    stream = router.stream(body.wire_messages(), task=task, **body.call_params())

    def encoding(stream: RoutedStream) -> ChunkEncoding:
        writer = ChunkWriter(
            response_id=new_completion_id(),
            model=stream.model or stream.provider or "",
            include_usage=body.include_usage,
        )
        return ChunkEncoding(writer, access)

    return await event_stream_answer(stream, task, receive, access, encoding)


class StreamEncoding(Protocol):
    """How one API writes a routed stream as server-sent events (`event_stream_answer`)."""

    def opening(self) -> bytes:
        """What comes before the first piece, or before the ending when none came."""

    def piece(self, piece: StreamPiece) -> bytes:
        """One piece of the answer: text (a `str`), or part of a tool call."""

    def ending(self, stream: RoutedStream) -> bytes:
        """The end of a complete answer (refusal, finish reason, usage...)."""

    def failure(self, exc: Exception) -> tuple[int, bytes]:
        """The status and the error event that end a stream failing after it began."""

    def shutdown(self) -> bytes:
        """The error event that ends a stream the shutdown grace cut short."""


async def event_stream_answer(
    stream: RoutedStream,
    task: str,
    receive: Receive,
    access: AccessRecord,
    encoding: Callable[[RoutedStream], StreamEncoding],
) -> Response:
    """Waits for the stream's first piece (so a candidate that fails before it is left for the
    next, and the client sees nothing of it), then answers with the event stream that
    `encoding` (made once the answering provider is known) writes."""
    groups = stream.piece_groups()
    try:
        first = await unless_disconnected(receive, _first_group(groups))
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        access.attempts = stream.attempts
        raise
    # The router names the answering candidate from its first delta on, but lists it among
    # the attempts only once it has finished; an empty answer has finished already.
    assert stream.provider is not None
    shown = list(stream.attempts)
    if first is not None:
        shown.append(Attempt(stream.provider, stream.model or "", AttemptOutcome.STREAMING))
    access.provider, access.attempts = stream.provider, shown
    headers = gateway_headers(task=task, provider=stream.provider, attempts=shown, cost=None)
    source = _sse(stream, groups, first, encoding(stream), access)
    return EventStreamResponse(source, headers=headers)


async def _first_group(groups: AsyncIterator[list[StreamPiece]]) -> list[StreamPiece] | None:
    try:
        return await anext(groups)
    except StopAsyncIteration:
        return None


class ChunkEncoding:
    """The chat route's stream: OpenAI's `chat.completion.chunk` events, then `[DONE]`."""

    __slots__ = ("_access", "_content", "_writer")

    def __init__(self, writer: ChunkWriter, access: AccessRecord) -> None:
        self._writer = writer
        self._content = EventTemplate(writer.content)
        self._access = access

    def opening(self) -> bytes:
        return event(self._writer.role())

    def piece(self, piece: StreamPiece) -> bytes:
        if type(piece) is str:
            return self._content(piece)
        assert isinstance(piece, ToolCallDelta)
        return event(self._writer.tool_call(piece))

    def ending(self, stream: RoutedStream) -> bytes:
        end = event(self._writer.refusal(stream.refusal)) if stream.refusal else b""
        end += event(self._writer.finish(stream.finish_reason))
        usage = self._writer.usage(stream.usage)
        if usage is not None:
            end += event(usage)
        return end + DONE

    def failure(self, exc: Exception) -> tuple[int, bytes]:
        failure = routing_failure(exc)
        if failure is None:
            log.error("stream for task %s failed unexpectedly", self._access.task, exc_info=exc)
            return 500, event(internal_error_body())
        status, payload = failure
        return status, event(payload)

    def shutdown(self) -> bytes:
        return event(shutdown_body())


async def _sse(
    stream: RoutedStream,
    groups: AsyncGenerator[list[StreamPiece], None],
    first: list[StreamPiece] | None,
    encoding: StreamEncoding,
    access: AccessRecord,
) -> AsyncGenerator[bytes, None]:
    """The answer's events: the opening and the first group of pieces together, each further
    group as it comes, and the ending (or the error event) as one `LastEvents`, once the
    stream is closed and its attempts recorded. Events that are ready together are sent
    together (a group is what one read of the upstream brought): one write, one packet, one
    wake-up of the client."""
    head = encoding.opening()
    piece = encoding.piece
    try:
        if first is not None:
            yield head + b"".join(map(piece, first))
            head, first = b"", None  # the first group is not held for the stream's life
            async for group in groups:
                yield b"".join(map(piece, group))
                del group  # not held while the next is awaited
        end = head + encoding.ending(stream)
        access.outcome = "success"
    except asyncio.CancelledError:
        if not SHUTDOWN.expired:
            access.status, access.outcome = CLIENT_CLOSED, "client_closed"
            raise
        # The shutdown grace ran out (the cancellation is the response's own, taken back as
        # the block that asked for it ends): the stream ends with an error event saying so.
        access.status, access.outcome = SERVER_SHUTDOWN, "server_shutdown"
        end = head + encoding.shutdown()
    except Exception as exc:
        status, payload = encoding.failure(exc)
        access.status, access.outcome = status, "stream_error"
        end = head + payload
    except BaseException:
        if SHUTDOWN.expired:  # ended while its response was being sent
            access.status, access.outcome = SERVER_SHUTDOWN, "server_shutdown"
        else:
            access.status, access.outcome = CLIENT_CLOSED, "client_closed"
        raise
    finally:
        await stream.aclose()
        await groups.aclose()
        # After the close, so a candidate cancelled mid-stream is listed too.
        access.answered(stream)
    yield LastEvents(end)
