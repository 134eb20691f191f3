"""Anthropic's Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

Clients that speak Anthropic's API (its SDKs, coding agents) use the gateway as they would
Anthropic: the request is translated into the router's OpenAI-shaped form
(`_anthropic_request`), routed through the task's chain (any provider type may answer), and
the answer translated back (`_anthropic_answer`), whole or as Anthropic's event stream.

Every answer of these routes is in Anthropic's shape, errors included (`{"type": "error",
"error": {"type", "message"}}`), so its SDKs raise their own exception classes: the routes use
`AnthropicRoute`, which checks the key (`x-api-key` or `Authorization: Bearer`) and turns
validation errors, refusals and routing failures into that shape before the app's (OpenAI-
shaped) handlers would see them. Two answers come from the front middleware before the route
runs and keep the OpenAI shape: 413 for a body over the limit and 408 for one too slow to
arrive (their statuses map to the same SDK exceptions).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from gateway._router import Router
from gateway._runtime import prompt_tokens
from gateway._streaming import RoutedStream
from gateway.errors import InvalidRequestError, ProviderError, RoutingError
from gateway.policy import Policy, TaskSpec
from gateway.providers import estimate_tokens
from gateway.providers.anthropic_shapes import (
    MESSAGE_STOP,
    error_body,
    error_type,
    event_bytes,
    message_delta,
    message_start,
    new_message_id,
    stop_reason,
    usage_fields,
)
from gateway.server._anthropic_answer import (
    AnthropicError,
    AnthropicMessage,
    BlockWriter,
    InputTokens,
    message_from,
)
from gateway.server._anthropic_request import (
    CountTokensRequest,
    MessagesRequest,
    request_field_names,
    union_tags,
    unsupported_feature,
)
from gateway.server._auth import API_KEY_HEADERS, Access, client_key, denial
from gateway.server._chat import (
    SERVER_SHUTDOWN,
    TASK_HEADER,
    TASK_HEADER_MAX_LENGTH,
    event_stream_answer,
    gateway_headers,
    shutdown_body,
    unless_disconnected,
)
from gateway.server._config import API_KEYS_ENV, MAX_MESSAGES_ENV
from gateway.server._disconnect import ClientGone, ServerShutdown
from gateway.server._errors import (
    RequestVocabulary,
    failure_headers,
    routing_failure,
    validation_message,
)
from gateway.server._middleware import CLIENT_CLOSED, AccessRecord, access_record
from gateway.server._sse import json_bytes
from gateway.server._state import ERROR, ServerState, server_state
from gateway.types import StreamPiece, Usage

log = logging.getLogger("gateway.server")

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"

_VOCABULARY = RequestVocabulary(request_field_names(), union_tags())

# --- errors -----------------------------------------------------------------------------------


def anthropic_error(
    message: str,
    *,
    status: int,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An error answer in Anthropic's shape; a 4xx says a retry cannot help."""
    body = error_body(error_type(status), message, **extra)
    return JSONResponse(
        body, status_code=status, headers={**(failure_headers(status) or {}), **(headers or {})}
    )


def _routing_error(exc: Exception, access: AccessRecord) -> tuple[int, dict[str, Any]]:
    """(status, Anthropic error body) for a failure of the gateway's own (unknown task, every
    provider failed, a request no candidate could take...), as the chat route's statuses."""
    failure = routing_failure(exc)
    if failure is None:
        # %r: the task may be the client's own text, and repr() escapes line breaks.
        log.error("messages request for task %r failed unexpectedly", access.task, exc_info=exc)
        return 500, error_body(
            "api_error", "the gateway failed unexpectedly; the server log has the details"
        )
    status, body = failure
    detail = body["error"]
    access.outcome = detail.get("code")
    extra = {"attempts": detail["attempts"]} if detail.get("attempts") is not None else {}
    return status, error_body(error_type(status), detail["message"], **extra)


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    """400 naming what is wrong: first anything the route refuses by name (a field without a
    faithful translation), then what validation found."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    found = unsupported_feature(body)
    if found is not None:
        return anthropic_error(found[1], status=400)
    content_type = request.headers.get("content-type")
    message, _ = validation_message(exc.errors(), _VOCABULARY, content_type)
    return anthropic_error(message, status=400)


class AnthropicRoute(APIRoute):
    """A route whose every answer is in Anthropic's shape: the key is checked first (from
    `x-api-key` or `Authorization: Bearer`), then errors raised on the way to the endpoint
    (validation) or out of it are answered here."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            state = server_state(request)
            key = client_key(request.headers.get("authorization"), request.headers.get("x-api-key"))
            access = state.keys.client(key, request.client.host if request.client else None)
            if access is not Access.GRANTED:
                denied = denial(access, header=API_KEY_HEADERS)
                headers = {"www-authenticate": "Bearer"} if denied.status == 401 else None
                return anthropic_error(denied.message, status=denied.status, headers=headers)
            record = access_record(request.scope)
            try:
                return await handler(request)
            except RequestValidationError as exc:
                record.outcome = "invalid_request"
                return await _invalid(request, exc)
            except HTTPException as exc:  # a body that is not text
                return anthropic_error(str(exc.detail), status=exc.status_code)
            except Exception as exc:  # a GatewayError of the router's, or a bug
                status, body = _routing_error(exc, record)
                return JSONResponse(body, status_code=status, headers=failure_headers(status))

        return route


# --- the routes -------------------------------------------------------------------------------

_bearer = HTTPBearer(
    auto_error=False,
    description="A key from GATEWAY_API_KEYS (GATEWAY_ADMIN_KEYS for admin routes).",
)
_api_key = APIKeyHeader(
    name="x-api-key",
    auto_error=False,
    description=f"A key from {API_KEYS_ENV}, as Anthropic's clients send it.",
)


def _documented_keys(
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
    api_key: str | None = Security(_api_key),
) -> None:
    """Shows both ways of sending the key in the OpenAPI document; `AnthropicRoute` checks
    it."""


_ERROR = {"model": AnthropicError}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        **_ERROR,
        "description": "Malformed JSON, a field outside the schema, a field with "
        "no faithful translation (named in the message).",
    },
    401: {**_ERROR, "description": "Missing or unknown API key."},
    404: {**_ERROR, "description": "Unknown task and the policy has no `default` task."},
    413: {
        **ERROR,
        "description": "The body is over GATEWAY_MAX_BODY_BYTES (answered before the route "
        "runs, in the chat route's error shape).",
    },
}
_ROUTED_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_RESPONSES,
    502: {**_ERROR, "description": "Every provider failed; `error.attempts` lists them."},
    504: {**_ERROR, "description": "The task's deadline_s ran out; `error.attempts` lists them."},
}

_SSE_EVENT = {
    "type": "object",
    "description": "One server-sent event: `event:` names it, `data:` is its JSON.",
    "required": ["data"],
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
}


def _task_header(
    value: str | None = Header(
        None,
        alias=TASK_HEADER,
        max_length=TASK_HEADER_MAX_LENGTH,
        description="Names the task to route; `model` is then ignored for routing.",
    ),
) -> str | None:
    return value


def add_messages_routes(app: FastAPI) -> None:
    """Adds the Messages routes to `app`."""
    router = APIRouter(route_class=AnthropicRoute, dependencies=[Depends(_documented_keys)])

    @router.post(
        MESSAGES_PATH,
        response_model=AnthropicMessage,
        responses={
            **_ROUTED_RESPONSES,
            200: {
                "description": "The message; with `stream: true`, Anthropic's Server-Sent Events "
                "(message_start, content_block_start/delta/stop, message_delta, message_stop), "
                "or an `error` event if the stream fails after it began.",
                "content": {"text/event-stream": {"schema": _SSE_EVENT}},
            },
        },
        tags=["anthropic"],
    )
    async def create_message(
        request: Request, body: MessagesRequest, task_header: str | None = Depends(_task_header)
    ) -> Response:
        state: ServerState = server_state(request)
        limit = state.settings.max_messages
        if len(body.messages) > limit:
            return anthropic_error(
                f"messages has {len(body.messages)} entries; send at most {limit} (the "
                f"server's limit is {MAX_MESSAGES_ENV})",
                status=400,
            )
        return await _create(state.router, body, task_header, request)

    @router.post(
        COUNT_TOKENS_PATH,
        response_model=InputTokens,
        responses=_RESPONSES,
        tags=["anthropic"],
        description="The gateway's own estimate of the prompt's input tokens (the one it "
        "routes on: about four characters a token), not a provider's tokenizer.",
    )
    async def count_tokens(
        request: Request, body: CountTokensRequest, task_header: str | None = Depends(_task_header)
    ) -> Response:
        router_ = server_state(request).router
        router_.policy.task(task_header or body.model)  # an unknown task is a 404, as above
        messages = body.router_messages()
        tools = [tool.model_dump(exclude_none=True) for tool in body.tools or ()]
        tokens = prompt_tokens(messages)
        if tools:
            tokens += estimate_tokens(json.dumps(tools, ensure_ascii=False))
        return JSONResponse({"input_tokens": tokens})

    app.include_router(router)


# --- answering --------------------------------------------------------------------------------


async def _create(
    router: Router, body: MessagesRequest, task_header: str | None, request: Request
) -> Response:
    access = access_record(request.scope)
    # Resolving the task up front turns an unknown one into a 404 before any work is done.
    spec = router.policy.task(task_header or body.model)
    task = access.task = spec.name
    _check_chain(router.policy, body, spec)
    messages, params = body.router_messages(), body.router_params()
    try:
        if body.stream:
            stream = router.stream(messages, task=task, **params)
            return await event_stream_answer(
                stream, task, request.receive, access, lambda s: MessageEncoding(s, access)
            )
        routed = await unless_disconnected(
            request.receive, router.generate(messages, task=task, **params)
        )
    except ClientGone:
        access.status, access.outcome = CLIENT_CLOSED, "client_closed"
        return Response(status_code=CLIENT_CLOSED)
    except ServerShutdown:
        access.outcome = "server_shutdown"
        return anthropic_error(
            _shutdown_message(), status=SERVER_SHUTDOWN, headers={"connection": "close"}
        )
    except RoutingError as exc:
        access.attempts = exc.attempts
        raise
    access.answered(routed)
    try:
        answer = message_from(routed)
    except ProviderError as exc:  # an answer Anthropic's shape cannot carry
        access.outcome = "invalid_response"
        return anthropic_error(str(exc), status=502)
    access.outcome = "success"
    headers = gateway_headers(
        task=task, provider=routed.provider, attempts=routed.attempts, cost=routed.cost_usd
    )
    return Response(json_bytes(answer), headers=headers, media_type="application/json")


PREFILL_TYPES = frozenset({"anthropic"})
"""Provider types that continue a conversation's last assistant turn (a prefill)."""
TOP_K_TYPES = frozenset({"anthropic", "ollama"})
"""Provider types that take `top_k` (Anthropic's field; Ollama's option of that name)."""


def _check_chain(policy: Policy, body: MessagesRequest, task: TaskSpec) -> None:
    """Refuse what only some provider types honour, when the task's chain holds another:
    a prefill (only Anthropic continues it; others would answer anew) and `top_k`."""
    if body.messages[-1].role == "assistant":
        others = _providers_outside(policy, task, PREFILL_TYPES)
        if others:
            raise InvalidRequestError(
                "messages ends with an assistant turn (a prefill for the answer to continue): "
                f"only anthropic providers continue it, and task {task.name!r} may be answered "
                f"by {others}, which would answer anew; end with a user turn, or send it to a "
                "task whose chain holds only anthropic providers"
            )
    if body.top_k is not None:
        others = _providers_outside(policy, task, TOP_K_TYPES)
        if others:
            raise InvalidRequestError(
                f"top_k={body.top_k}: only anthropic and ollama providers take it, and task "
                f"{task.name!r} may be answered by {others}; leave top_k out (use top_p or "
                "temperature), or send it to a task whose chain holds only those types"
            )


def _providers_outside(policy: Policy, task: TaskSpec, types: frozenset[str]) -> str:
    """The task's providers whose type is not one of `types`, as `name (type)`; '' if none."""
    return ", ".join(
        sorted(
            {
                f"{entry.provider} ({policy.providers[entry.provider].type})"
                for entry in task.chain
                if policy.providers[entry.provider].type not in types
            }
        )
    )


def _shutdown_message() -> str:
    message: str = shutdown_body()["error"]["message"]
    return message


class MessageEncoding:
    """This route's stream: Anthropic's event sequence, from `message_start` (sent with the
    first piece) to `message_stop`, or an `error` event if the stream fails after it began."""

    __slots__ = ("_access", "_blocks", "_opening")

    def __init__(self, stream: RoutedStream, access: AccessRecord) -> None:
        start = message_start(
            new_message_id(),
            stream.model or stream.provider or "",
            usage_fields(Usage(), output_tokens=0),
        )
        self._opening = event_bytes(start)
        self._blocks = BlockWriter()
        self._access = access

    def opening(self) -> bytes:
        return self._opening

    def piece(self, piece: StreamPiece) -> bytes:
        return self._blocks.piece(piece)

    def ending(self, stream: RoutedStream) -> bytes:
        end = self._blocks.text(stream.refusal) if stream.refusal else b""
        reason = "refusal" if stream.refusal else stop_reason(stream.finish_reason)
        end += self._blocks.close()
        end += event_bytes(message_delta(reason, usage_fields(stream.usage)))
        return end + event_bytes(MESSAGE_STOP)

    def failure(self, exc: Exception) -> tuple[int, bytes]:
        status, payload = _routing_error(exc, self._access)
        return status, event_bytes(payload)

    def shutdown(self) -> bytes:
        return event_bytes(error_body("api_error", _shutdown_message()))
