"""The FastAPI app: routes, auth, limits and error shapes around one shared `Router`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.openapi.utils import get_openapi
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

import gateway
from gateway._router import Router
from gateway.errors import GatewayError, PolicyError, UnknownTaskError
from gateway.hooks import Deferred
from gateway.metrics import default_metrics, exposition
from gateway.server import _monitoring as monitoring
from gateway.server._auth import KeyChecker, bearer_key
from gateway.server._chat import (
    TASK_HEADER,
    TASK_HEADER_MAX_LENGTH,
    chat_completion,
    parse_request,
    read_body,
    request_headers,
)
from gateway.server._config import MAX_MESSAGES_ENV, ServerSettings
from gateway.server._console import add_console_routes, console_feed
from gateway.server._console_feed import RecentRequests
from gateway.server._disconnect import ClientGone
from gateway.server._docs_page import add_docs_routes
from gateway.server._embeddings_api import add_embeddings_routes
from gateway.server._errors import (
    RequestVocabulary,
    error_response,
    failure_headers,
    install_handlers,
    internal_error_body,
    routing_failure,
)
from gateway.server._messages_api import add_messages_routes
from gateway.server._middleware import (
    CLIENT_CLOSED,
    BodyTimeout,
    BodyTooLarge,
    Front,
    access_record,
    body_timeout_response,
    too_large_response,
)
from gateway.server._openai_compat import (
    ChatCompletion,
    ChatCompletionRequest,
    ModelCard,
    ModelList,
    request_field_names,
    union_tags,
)
from gateway.server._state import (
    ADMIN_ERRORS,
    CLIENT_ERRORS,
    ERROR,
    AccessDenied,
    ServerState,
    check_client,
    require_admin,
    require_client,
    server_state,
)
from gateway.tracing import continue_incoming_traces, hooks_from_env

log = logging.getLogger("gateway.server")

CHAT_PATH = "/v1/chat/completions"
POLICY_ENV = "GATEWAY_SERVE_POLICY"
"""How `serve` hands the policy path to worker processes (which build the app themselves)."""
SIGHUP_ENV = "GATEWAY_SERVE_SIGHUP"


_GATEWAY_HEADERS = {
    "x-gateway-task": {"description": "The task that was routed.", "schema": {"type": "string"}},
    "x-gateway-provider": {
        "description": "The provider instance that answered.",
        "schema": {"type": "string"},
    },
    "x-gateway-attempts": {
        "description": "How many candidates were tried or skipped.",
        "schema": {"type": "string"},
    },
    "x-gateway-attempts-detail": {
        "description": "provider:outcome for each candidate, e.g. mini:server_error,sonnet:success "
        "(a stream shows its answering provider as `streaming`).",
        "schema": {"type": "string"},
    },
    "x-gateway-cost-usd": {
        "description": "Estimated cost in USD (not sent for streams).",
        "schema": {"type": "string"},
    },
}

_SSE_EVENT = {
    "type": "object",
    "description": "One server-sent event.",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "A chat.completion.chunk object as JSON, an error object as JSON, "
            "or [DONE].",
        }
    },
}

_CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The answer; with `stream: true`, Server-Sent Events of "
        "chat.completion.chunk objects ending in `data: [DONE]`, or in an error event "
        '(`data: {"error": {...}}`, no [DONE]) if the stream fails after it began.',
        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
        "headers": _GATEWAY_HEADERS,
    },
    400: {**ERROR, "description": "Malformed JSON, a field outside the schema, bad messages."},
    **CLIENT_ERRORS,
    404: {**ERROR, "description": "Unknown task and the policy has no `default` task."},
    413: {**ERROR, "description": "The body is over GATEWAY_MAX_BODY_BYTES."},
    502: {**ERROR, "description": "Every provider failed; `error.attempts` lists them."},
    504: {**ERROR, "description": "The task's deadline_s ran out; `error.attempts` lists them."},
}


def create_app(
    policy_path: str | os.PathLike[str],
    *,
    settings: ServerSettings | None = None,
    handle_sighup: bool = False,
) -> FastAPI:
    """The gateway's ASGI app. The router is built at startup and closed at shutdown.

    `handle_sighup` makes SIGHUP reload the policy (for the process that owns the signal:
    `serve` sets it; an app embedded elsewhere should leave signals to its host).
    """
    settings = settings or ServerSettings.from_env()
    path = os.fspath(policy_path)

    lifecycle = _Lifecycle(path, settings, handle_sighup)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await lifecycle.start(app)
        try:
            yield
        finally:
            await lifecycle.close(app)

    app = FastAPI(
        title="gateway",
        version=gateway.__version__,
        summary="A resilient routing gateway for LLM calls, OpenAI-compatible.",
        lifespan=lifespan,
        # FastAPI's Swagger UI and Redoc pages load their scripts from a CDN and stay blank
        # on a host with no network; add_docs_routes serves a plain page there instead.
        docs_url=None,
        redoc_url=None,
    )
    install_handlers(app, RequestVocabulary(request_field_names(), union_tags()))

    async def on_denied(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AccessDenied)
        headers = {"www-authenticate": "Bearer"} if exc.denial.status == 401 else None
        return error_response(
            exc.denial.message, status=exc.denial.status, code=exc.denial.code, headers=headers
        )

    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        failure = routing_failure(exc)
        if failure is None:
            # %r: the path is the client's, and repr() escapes line breaks and other controls.
            log.error("unhandled gateway error on %r", request.url.path, exc_info=exc)
            return JSONResponse(internal_error_body(), status_code=500)
        status, body = failure
        access = access_record(request.scope)
        access.outcome = body["error"]["code"]
        return JSONResponse(body, status_code=status, headers=failure_headers(status))

    async def on_too_large(request: Request, exc: Exception) -> Response:
        return too_large_response(settings.max_body_bytes)

    app.add_exception_handler(AccessDenied, on_denied)
    app.add_exception_handler(BodyTooLarge, on_too_large)
    app.add_exception_handler(GatewayError, on_gateway_error)
    chat_route = _add_routes(app)
    # The chat route reads and limits its body itself; every other request is limited here.
    app.add_middleware(
        Front,
        max_bytes=settings.max_body_bytes,
        reads_own_body=chat_route,
        body_timeout_s=settings.body_timeout_s,
    )
    app.add_middleware(StartOnFirstUse, lifecycle=lifecycle)
    continue_incoming_traces(app)  # outermost: a caller's trace is continued from the start
    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
    add_docs_routes(app)
    return app


class _Lifecycle:
    """Builds the app's `ServerState` and closes it. The lifespan starts it; an app mounted in
    another whose lifespan does not reach it (Starlette's `Mount` does not pass lifespan
    events on) starts it on its first request instead, once, however many arrive together.
    Closing happens when a lifespan that runs it ends."""

    def __init__(self, path: str, settings: ServerSettings, handle_sighup: bool) -> None:
        self.path = path
        self.settings = settings
        self.handle_sighup = handle_sighup
        self._lock = asyncio.Lock()
        self._stack: AsyncExitStack | None = None

    async def start(self, app: FastAPI) -> None:
        if self._stack is not None:
            return
        async with self._lock:
            if self._stack is not None:
                return
            async with AsyncExitStack() as stack:
                settings = self.settings
                # The console's ring of recent requests: not deferred, it follows each request
                # through its own context.
                recent = RecentRequests()
                router = Router.from_yaml(
                    self.path,
                    watch=settings.policy_watch_s is not None,
                    watch_interval_s=settings.policy_watch_s or 1.0,
                    # Recorded just after each response is sent, not before (see Deferred).
                    # Tracing (when OTEL_* asks for it) reads the providers off the router.
                    hooks=[Deferred(default_metrics()), recent, *hooks_from_env(lambda: router)],
                )
                await stack.enter_async_context(router)
                state = ServerState(router, settings, KeyChecker(settings), policy_path=self.path)
                state.console = await stack.enter_async_context(console_feed(state, recent))
                if self.handle_sighup:
                    _install_sighup(state, stack)
                app.state.gateway = state
                stack.callback(delattr, app.state, "gateway")
                log.info(
                    "gateway serving policy %s (sha256 %s); %s",
                    self.path,
                    router.policy.sha256[:12],
                    "no API keys (loopback clients only)"
                    if settings.open_mode
                    else "API keys required",
                )
                # Started: the stack is kept open until close().
                self._stack = stack.pop_all()

    async def close(self, app: FastAPI) -> None:
        async with self._lock:
            stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        # A lock that has waited is tied to its event loop; the app may start again on another
        # (a test client runs each session on its own loop).
        self._lock = asyncio.Lock()


class StartOnFirstUse:
    """ASGI middleware: every HTTP request finds the app's state set up (see `_Lifecycle`)."""

    def __init__(self, app: ASGIApp, lifecycle: _Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.lifecycle.start(scope["app"])
        await self.app(scope, receive, send)


def app_from_env() -> FastAPI:
    """The app factory `serve` gives uvicorn (each worker process calls it)."""
    path = os.environ.get(POLICY_ENV)
    if not path:
        raise GatewayError(f"{POLICY_ENV} is not set: start the server with `gateway serve`")
    return create_app(path, handle_sighup=os.environ.get(SIGHUP_ENV) == "1")


def _install_sighup(state: ServerState, stack: AsyncExitStack) -> None:
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        try:
            await state.reload("SIGHUP")
        except PolicyError:
            pass  # logged by reload(); the old policy keeps serving
        except Exception:
            log.exception("policy reload on SIGHUP failed")

    def on_hup() -> None:
        task = loop.create_task(reload(), name="gateway-sighup-reload")
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    stack.callback(loop.remove_signal_handler, signal.SIGHUP)


class ChatCompletions:
    """`POST /v1/chat/completions`, as a plain ASGI endpoint on a Starlette route: it reads its
    body itself, validates it from bytes and builds its answers by hand, rather than through
    FastAPI's dependency injection, body handling and response validation. It checks the key,
    reads and validates the body, and answers errors exactly as the FastAPI declaration in
    `_chat_completions_document` (the one the OpenAPI document shows) would; the errors it
    raises go to the app's exception handlers, as every other route's do.

    The key is checked before the body is read, so a client without a valid key learns nothing
    about its body. The body is read once, up to the limit and no further (`Front` has already
    refused a declared Content-Length over it).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: ServerState = scope["app"].state.gateway
        headers = request_headers(scope)
        client = scope.get("client")
        check_client(state, bearer_key(headers.authorization), client[0] if client else None)
        record = access_record(scope)
        try:
            raw = await read_body(
                receive, state.settings.max_body_bytes, state.settings.body_timeout_s
            )
        except ClientGone:
            record.status, record.outcome = CLIENT_CLOSED, "client_closed"
            return
        except BodyTimeout:
            record.outcome = "body_timeout"
            await body_timeout_response(state.settings.body_timeout_s)(scope, receive, send)
            return
        body = parse_request(raw, headers)
        limit = state.settings.max_messages
        response: Response
        if len(body.messages) > limit:
            response = error_response(
                f"messages has {len(body.messages)} entries; send at most {limit} "
                f"(the server's limit is {MAX_MESSAGES_ENV})",
                status=400,
                code="too_many_messages",
                param="messages",
            )
        else:
            response = await chat_completion(
                state.router, body, task_header=headers.task, receive=receive, access=record
            )
        # A stream may stay open for minutes: it holds what it routes, not the request as sent.
        del raw, body
        await response(scope, receive, send)


def _chat_completions_document() -> APIRouter:
    """How the OpenAPI document describes `POST /v1/chat/completions`. `ChatCompletions`
    serves the route; this declaration is never routed to."""
    document = APIRouter()

    @document.post(
        CHAT_PATH,
        response_model=ChatCompletion,
        responses=_CHAT_RESPONSES,
        dependencies=[Depends(require_client)],
        tags=["openai"],
    )
    async def chat_completions(
        body: ChatCompletionRequest,
        x_gateway_task: str | None = Header(
            None,
            alias=TASK_HEADER,
            max_length=TASK_HEADER_MAX_LENGTH,
            description="Names the task to route; `model` is then ignored for routing.",
        ),
    ) -> Response:
        raise NotImplementedError("served by ChatCompletions")

    return document


_CHAT_DOCUMENT = _chat_completions_document()


def _add_routes(app: FastAPI) -> Route:
    """The app's routes; returns the chat route."""
    client = [Depends(require_client)]
    chat = Route(CHAT_PATH, ChatCompletions(), methods=["POST"], include_in_schema=False)
    # First, so that the busiest route is matched before any other is tried.
    app.router.routes.insert(0, chat)

    @app.get(
        "/v1/models",
        response_model=ModelList,
        responses=CLIENT_ERRORS,
        dependencies=client,
        tags=["openai"],
    )
    async def list_models(request: Request) -> ModelList:
        policy = server_state(request).router.policy
        created = int(policy.loaded_at)
        return ModelList(data=[ModelCard(id=name, created=created) for name in policy.tasks])

    @app.get(
        "/v1/models/{model}",
        response_model=ModelCard,
        responses={**CLIENT_ERRORS, 404: {**ERROR, "description": "No task of that name."}},
        dependencies=client,
        tags=["openai"],
    )
    async def retrieve_model(request: Request, model: str) -> Response:
        policy = server_state(request).router.policy
        if model not in policy.tasks:
            return error_response(
                f"no task named {model!r}; GET /v1/models lists the tasks",
                status=404,
                code="model_not_found",
                param="model",
            )
        card = ModelCard(id=model, created=int(policy.loaded_at))
        return JSONResponse(card.model_dump())

    @app.get(
        "/api/v1/monitoring/providers",
        response_model=monitoring.ProvidersReport,
        responses=CLIENT_ERRORS,
        dependencies=client,
        tags=["monitoring"],
    )
    async def providers(request: Request) -> monitoring.ProvidersReport:
        router = server_state(request).router
        return monitoring.providers_report(router.policy, router.candidates)

    @app.get(
        "/api/v1/monitoring/breakers",
        response_model=monitoring.BreakersReport,
        responses=CLIENT_ERRORS,
        dependencies=client,
        tags=["monitoring"],
    )
    async def breakers(request: Request) -> monitoring.BreakersReport:
        return monitoring.breakers_report(server_state(request).router.candidates)

    @app.get(
        "/api/v1/monitoring/tasks/{task}",
        response_model=monitoring.TaskOrderReport,
        responses={
            **CLIENT_ERRORS,
            404: {**ERROR, "description": "Unknown task and the policy has no `default` task."},
        },
        dependencies=client,
        tags=["monitoring"],
    )
    async def task_order(request: Request, task: str) -> Response:
        router = server_state(request).router
        policy = router.policy
        try:
            report = monitoring.task_order_report(policy, task, router.explain(task))
        except UnknownTaskError as exc:
            # The task is named by the path here, not by a body's `model`.
            return error_response(str(exc), status=404, code="model_not_found", param="task")
        return JSONResponse(report.model_dump(mode="json"))

    @app.get(
        "/api/v1/policy",
        response_model=monitoring.PolicyReport,
        responses=CLIENT_ERRORS,
        dependencies=client,
        tags=["policy"],
    )
    async def policy(request: Request) -> monitoring.PolicyReport:
        return monitoring.policy_report(server_state(request).router.policy)

    @app.post(
        "/api/v1/policy/reload",
        response_model=monitoring.ReloadReport,
        responses={
            **ADMIN_ERRORS,
            422: {**ERROR, "description": "The file is invalid; the old policy keeps serving."},
        },
        dependencies=[Depends(require_admin)],
        tags=["policy"],
    )
    async def reload_policy(request: Request) -> monitoring.ReloadReport:
        state = server_state(request)
        applied = await state.reload("HTTP")
        current = state.router.policy
        return monitoring.ReloadReport(
            applied=applied, sha256=current.sha256, loaded_at=current.loaded_at
        )

    @app.get("/healthz", response_model=monitoring.Health, tags=["health"])
    async def healthz() -> monitoring.Health:
        return monitoring.Health()

    @app.get(
        "/readyz",
        response_model=monitoring.Readiness,
        responses={503: {"model": monitoring.Readiness, "description": "Not ready: see reasons."}},
        tags=["health"],
    )
    async def readyz(request: Request) -> Response:
        state: ServerState | None = getattr(request.app.state, "gateway", None)
        if state is None:
            report = monitoring.readiness(None, {})
        else:
            report = monitoring.readiness(state.router.policy, state.router.candidates)
        return JSONResponse(
            report.model_dump(mode="json"), status_code=200 if report.ready else 503
        )

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "Prometheus text exposition.",
            }
        },
        tags=["health"],
    )
    async def metrics() -> Response:
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    add_messages_routes(app)
    add_embeddings_routes(app)
    add_console_routes(app)
    return chat


def _openapi(app: FastAPI, settings: ServerSettings) -> dict[str, Any]:
    """FastAPI's document, corrected to what the server does: validation errors are 400
    (never 422) and `messages` is capped at the configured limit."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        routes=[*_CHAT_DOCUMENT.routes, *app.routes],
    )
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if path != "/api/v1/policy/reload":
                responses.pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    request_schema = components.get("ChatCompletionRequest", {})
    messages = request_schema.get("properties", {}).get("messages")
    if messages is not None:
        messages["maxItems"] = settings.max_messages
    app.openapi_schema = schema
    return schema
