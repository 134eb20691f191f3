"""POST /v1/chat/completions: one OpenAI-style request through the router, whole or streamed.

A stream's response starts only once its first delta is in hand: until then the router may
still fall through to another candidate, and a request that fails before any text answers with
a proper status (502, 504...) instead of an event stream. After that, a failure ends the
stream with an error event (`data: {"error": {...}}`) and no `[DONE]`: `[DONE]` means the
answer is complete.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import anyio
from starlette.responses import JSONResponse, Response
from starlette.types import Receive

from gateway.router import Router
from gateway.server.errors import internal_error_body, routing_failure
from gateway.server.middleware import CLIENT_CLOSED, AccessRecord
from gateway.server.openai_compat import (
    ChatCompletionRequest,
    ChunkWriter,
    completion_body,
    new_completion_id,
)
from gateway.server.sse import DONE, EventStreamResponse, event
from gateway.server.trace import RequestTrace, resume_trace, start_trace
from gateway.streaming import RoutedStream
from gateway.types import Attempt, Usage

log = logging.getLogger("gateway.server")

T = TypeVar("T")

TASK_HEADER = "x-gateway-task"
STREAMING = "streaming"
"""The outcome shown for the candidate a stream is still reading from."""


class ClientGone(Exception):
    """The client disconnected before its answer was ready; the upstream call was cancelled."""


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects meanwhile (raise `ClientGone`).

    The request body has been read by now, so the next ASGI message can only be the
    disconnect. `work` runs in this task, so the router's hooks still see this request's trace.
    """
    gone = False
    failure: Exception | None = None
    result: T | None = None

    async with anyio.create_task_group() as group:

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            group.cancel_scope.cancel()

        group.start_soon(watch)
        try:
            result = await work
        except Exception as exc:  # raised as itself below, not wrapped in an ExceptionGroup
            failure = exc
        group.cancel_scope.cancel()
    if gone:
        raise ClientGone
    if failure is not None:
        raise failure
    return result  # type: ignore[return-value]


def attempts_detail(attempts: Sequence[tuple[str, str]]) -> str:
    return ",".join(f"{provider}:{outcome}" for provider, outcome in attempts)


def gateway_headers(
    *, task: str, provider: str | None, attempts: Sequence[tuple[str, str]], cost: float | None
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


@dataclass(frozen=True, slots=True)
class _Answer:
    text: str
    provider: str | None
    model: str | None
    usage: Usage
    attempts: list[tuple[str, str]]
    cost: float
    finish: str | None = None
    response_id: str | None = None


def _pairs(attempts: Sequence[Attempt]) -> list[tuple[str, str]]:
    return [(a.provider, a.outcome) for a in attempts]


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
    trace = start_trace()
    try:
        if body.stream:
            return await _stream(router, body, task, trace, receive, access)
        return await _complete(router, body, task, trace, receive, access)
    except ClientGone:
        access.status, access.outcome = CLIENT_CLOSED, "client_closed"
        access.attempts = trace.attempts
        return Response(status_code=CLIENT_CLOSED)
    except Exception:
        access.attempts = trace.attempts
        raise


async def _complete(
    router: Router,
    body: ChatCompletionRequest,
    task: str,
    trace: RequestTrace,
    receive: Receive,
    access: AccessRecord,
) -> Response:
    messages, params = body.wire_messages(), body.call_params()
    if body.json_mode:
        parsed = await unless_disconnected(
            receive, router.generate_json(messages, task=task, **params)
        )
        # The router hands back the parsed object, so the text is that object re-serialised.
        answer = _Answer(
            text=json.dumps(parsed, ensure_ascii=False),
            provider=trace.provider,
            model=trace.model,
            usage=trace.usage,
            attempts=trace.attempts,
            cost=trace.cost_usd,
        )
    else:
        routed = await unless_disconnected(receive, router.generate(messages, task=task, **params))
        answer = _Answer(
            text=routed.text,
            provider=routed.provider,
            model=routed.model,
            usage=routed.usage,
            attempts=_pairs(routed.attempts),
            cost=routed.cost_usd,
            finish=routed.finish_reason,
            response_id=routed.response_id,
        )
    access.provider, access.attempts, access.cost_usd = (
        answer.provider,
        answer.attempts,
        answer.cost,
    )
    payload = completion_body(
        response_id=answer.response_id or new_completion_id(),
        model=answer.model or answer.provider or task,
        text=answer.text,
        finish=answer.finish,
        usage=answer.usage,
    )
    headers = gateway_headers(
        task=task, provider=answer.provider, attempts=answer.attempts, cost=answer.cost
    )
    return JSONResponse(payload, headers=headers)


async def _stream(
    router: Router,
    body: ChatCompletionRequest,
    task: str,
    trace: RequestTrace,
    receive: Receive,
    access: AccessRecord,
) -> Response:
    params = body.call_params()
    if body.json_mode:
        params["json_mode"] = True
    stream = router.stream(body.wire_messages(), task=task, **params)
    try:
        first = await unless_disconnected(receive, _first_delta(stream))
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        raise
    answering = [*trace.attempts, (trace.provider or "?", STREAMING)]
    access.provider, access.attempts = trace.provider, answering
    writer = ChunkWriter(
        response_id=new_completion_id(),
        model=trace.model or trace.provider or task,
        include_usage=body.include_usage,
    )
    headers = gateway_headers(task=task, provider=trace.provider, attempts=answering, cost=None)
    return EventStreamResponse(_events(stream, first, writer, trace, access), headers=headers)


async def _first_delta(stream: RoutedStream) -> str | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


async def _events(
    stream: RoutedStream,
    first: str | None,
    writer: ChunkWriter,
    trace: RequestTrace,
    access: AccessRecord,
) -> AsyncGenerator[bytes, None]:
    resume_trace(trace)  # this body runs in the response's task, not the handler's
    try:
        yield event(writer.role())
        if first is not None:
            yield event(writer.content(first))
            async for delta in stream:
                yield event(writer.content(delta))
        yield event(writer.finish(stream.finish_reason))
        usage = writer.usage(stream.usage)
        if usage is not None:
            yield event(usage)
        yield DONE
        access.outcome = "success"
    except Exception as exc:
        failure = routing_failure(exc)
        if failure is None:
            log.error("stream for task %s failed unexpectedly", access.task, exc_info=exc)
            status, payload = 500, internal_error_body()
        else:
            status, payload = failure
        access.status, access.outcome = status, "stream_error"
        yield event(payload)
    except BaseException:
        access.status, access.outcome = CLIENT_CLOSED, "client_closed"
        raise
    finally:
        access.attempts = trace.attempts
        access.provider = stream.provider or trace.provider
        access.cost_usd = trace.cost_usd
        await stream.aclose()
