"""FakeUpstream: a real HTTP server on 127.0.0.1 that answers like OpenAI, Azure OpenAI,
Anthropic and Ollama, and misbehaves on request.

Besides chat it answers embeddings on OpenAI's wire (`POST /v1/embeddings`, Azure's
deployment path too) and Ollama's (`POST /api/embed`): `fake_vector(model, text, n)` for each
input, `n` being the request's `dimensions`, else what `embedding_model()` set, else the
model's known length (`gateway.policy.KNOWN_DIMENSIONS`), else 16. The same faults apply.

    async with FakeUpstream() as up:
        up.script("gpt-4o", Fault.rate_limit(retry_after=1), Fault.ok())
        client = openai.AsyncOpenAI(base_url=up.openai_base_url, api_key="test")
        ...
        assert up.count("gpt-4o") == 2

Faults for a request are chosen in this order: `script_next` (any model), then the model's
`script`, then its `fail_always`, then `chaos`; with none of them it answers healthily.

Run it as its own process (benchmarks, the server's --simulate mode):

    python -m gateway.testing.fake_upstream --port 0
    # prints FAKE_UPSTREAM_URL=http://127.0.0.1:PORT, serves until SIGTERM/SIGINT
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gateway._secrets import is_secret_name
from gateway.policy import known_dimensions, shortens_vectors
from gateway.testing._anthropic_tools import check_fields
from gateway.testing._anthropic_wire import AnthropicWire
from gateway.testing._chaos import Chaos
from gateway.testing._client import UpstreamURLs
from gateway.testing._control import handle_control
from gateway.testing._faults import Fault
from gateway.testing._http import BadHttpRequest, HttpConnection, HttpRequest, HttpServer
from gateway.testing._ollama_wire import OllamaWire, ollama_embeddings
from gateway.testing._openai_wire import AzureOpenAIWire, OpenAIWire, openai_embeddings
from gateway.testing._protocols import Call, RequestRejected, Wire
from gateway.testing._replies import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    ReplySpec,
    embedding_tokens,
    fake_vector,
    scripted_calls,
)
from gateway.testing._respond import respond, respond_embedding, send_error
from gateway.types import Usage

if TYPE_CHECKING:
    from gateway.testing._client import SpawnedFakeUpstream

__all__ = ["DEFAULT_CHAOS_RATES", "FakeUpstream", "ReceivedRequest"]

DEFAULT_CHAOS_RATES: dict[str, float] = {
    "rate_limit": 0.05,
    "server_error": 0.05,
    "overloaded": 0.03,
    "hang": 0.01,
    "reset": 0.02,
    "cut_stream": 0.03,
}

WIRES: dict[str, Wire] = {
    wire.name: wire for wire in (OpenAIWire(), AzureOpenAIWire(), AnthropicWire(), OllamaWire())
}

_AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")
_AZURE_EMBEDDINGS_PATH = re.compile(r"^/openai/deployments/([^/]+)/embeddings$")
_ROUTES = {
    "/v1/chat/completions": "openai",
    "/v1/messages": "anthropic",
    "/api/chat": "ollama",
}
_EMBEDDING_ROUTES = {"/v1/embeddings": "openai", "/api/embed": "ollama"}


@dataclass(frozen=True, slots=True)
class EmbeddingModel:
    """How FakeUpstream's embeddings for one model look."""

    dimensions: int
    takes_dimensions: bool
    """Whether a request's `dimensions` is honoured; if not, it is refused with a 400, as
    OpenAI refuses it for text-embedding-ada-002."""


@dataclass(slots=True)
class ReceivedRequest:
    """One API request FakeUpstream parsed, recorded before any fault was applied to it."""

    protocol: str
    """"openai", "azure", "anthropic" or "ollama"."""
    model: str
    """The requested model; for Azure, the deployment name."""
    path: str
    stream: bool
    body: dict[str, Any]
    headers: dict[str, str]
    """Lower-case names. Credentials are here for tests to check; `repr` and `to_dict` hide them."""
    query: dict[str, str] = field(default_factory=dict)
    rejection: str | None = None
    """For a request in `FakeUpstream.rejected`: the 400's message."""

    def safe_headers(self) -> dict[str, str]:
        return {k: ("<redacted>" if is_secret_name(k) else v) for k, v in self.headers.items()}

    def to_dict(self) -> dict[str, Any]:
        data = {
            "protocol": self.protocol,
            "model": self.model,
            "path": self.path,
            "stream": self.stream,
            "body": self.body,
            "headers": self.safe_headers(),
            "query": self.query,
        }
        if self.rejection is not None:
            data["rejection"] = self.rejection
        return data

    def __repr__(self) -> str:
        return (
            f"ReceivedRequest(protocol={self.protocol!r}, model={self.model!r}, "
            f"path={self.path!r}, stream={self.stream!r}, headers={self.safe_headers()!r})"
        )


class FakeUpstream(UpstreamURLs):
    """An HTTP server speaking the OpenAI, Azure OpenAI, Anthropic and Ollama chat APIs."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_recorded_requests: int = 10_000,
        strict: bool = False,
    ) -> None:
        """`strict=True` adds the real APIs' checks that the gateway leaves to them, each
        answered with the API's own 400: an Anthropic top-level field the API does not know
        (`<field>: Extra inputs are not permitted`); an OpenAI `tool` message that answers no
        `tool_calls` id of the assistant message before it, or a call left unanswered; an
        Anthropic `tool_result` that answers no `tool_use` of the previous turn, or a
        `tool_use` left unanswered. Off by default: the gateway forwards callers' vendor fields
        and tool histories as given, on purpose, and tests of that send what the APIs refuse.
        Checks the gateway must always get right (tool definitions, tool_choice, schemas,
        argument types, Anthropic's roles) apply either way."""
        self._strict = strict
        self._server = HttpServer(self._handle, on_bad_request=self._bad_http, host=host, port=port)
        self._max_recorded = max_recorded_requests
        self._replies: dict[str | None, ReplySpec] = {}
        self._scripts: dict[str, deque[Fault]] = {}
        self._next: deque[Fault] = deque()
        self._always: dict[str, Fault] = {}
        self._chaos: Chaos | None = None
        self._embedding_models: dict[str, EmbeddingModel] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self.requests: list[ReceivedRequest] = []
        self.rejected: list[ReceivedRequest] = []
        """Requests answered 400 because the real API would refuse them (not counted, not in
        `requests`); each one's `rejection` says why."""
        self.injected: Counter[str] = Counter()
        """Faults actually applied, by kind (healthy answers are not counted)."""
        self._started = False

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> FakeUpstream:
        if not self._started:
            await self._server.start()
            self._started = True
        return self

    async def close(self) -> None:
        """Close every client connection and cancel handlers still waiting (hung requests)."""
        await self._server.close()

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @classmethod
    def spawn(
        cls, *, host: str = "127.0.0.1", port: int = 0, ready_timeout_s: float = 15.0
    ) -> SpawnedFakeUpstream:
        """Start one in a subprocess; use as a context manager or call `.terminate()`."""
        from gateway.testing._client import SpawnedFakeUpstream

        return SpawnedFakeUpstream.start(host=host, port=port, ready_timeout_s=ready_timeout_s)

    # --- addresses --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self._started:
            raise RuntimeError("FakeUpstream is not started: use `async with FakeUpstream() as up`")
        return f"http://{self._server.host}:{self._server.port}"

    @property
    def open_connections(self) -> int:
        return self._server.open_connections

    # --- behaviour --------------------------------------------------------------------------

    def reply(
        self,
        model: str | None,
        text: str | None = None,
        *,
        cached_input_tokens: int = 0,
        latency_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        usage: Usage | None = None,
        tool_calls: Sequence[Mapping[str, Any]] | None = None,
        refusal: str | None = None,
    ) -> None:
        """How healthy answers for `model` look; `model=None` sets it for every other model.

        `usage` replaces the token counts the answers report (in each protocol's own fields),
        exactly as given, negative or absurd ones included; in-process only, not on the
        control API.

        `tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}, ...]` answers
        exactly these tool calls (several: parallel calls; with `text`, text comes first) in
        each protocol's own shape, whatever tools the request offered; `[]` never calls a tool.
        None (the default) decides from the request: a request with tools gets a call to the
        first tool not called yet, with arguments sampled from its schema; one that ends with a
        tool result gets text quoting it (see `gateway.testing._plan`). `refusal` answers a
        refusal: OpenAI's message.refusal with null content, Anthropic's stop_reason
        "refusal", plain text on Ollama."""
        self._replies[model] = ReplySpec(
            text,
            cached_input_tokens,
            latency_s,
            chunk_delay_s,
            usage,
            scripted_calls(tool_calls),
            refusal,
        )

    def embedding_model(
        self, model: str, *, dimensions: int, takes_dimensions: bool | None = None
    ) -> None:
        """Embeddings from `model` are `dimensions` long. `takes_dimensions`: whether a
        request may ask for another length (None: as OpenAI's models, only the
        text-embedding-3 ones and models `KNOWN_DIMENSIONS` does not list)."""
        if takes_dimensions is None:
            takes_dimensions = shortens_vectors(model) or known_dimensions(model) is None
        self._embedding_models[model] = EmbeddingModel(dimensions, takes_dimensions)

    def embedding_for(self, model: str, text: str, dimensions: int | None = None) -> list[float]:
        """The vector this server answers for `text` from `model` (of its own length, or
        `dimensions`)."""
        return fake_vector(model, text, dimensions or self._embedding_spec(model).dimensions)

    def _embedding_spec(self, model: str) -> EmbeddingModel:
        found = self._embedding_models.get(model)
        if found is not None:
            return found
        length = known_dimensions(model) or DEFAULT_EMBEDDING_DIMENSIONS
        return EmbeddingModel(length, shortens_vectors(model) or known_dimensions(model) is None)

    def script(self, model: str, *faults: Fault) -> None:
        """The next len(faults) requests for `model` get these faults in order."""
        self._scripts.setdefault(model, deque()).extend(_faults(faults))

    def script_next(self, *faults: Fault) -> None:
        """The next len(faults) requests, whatever their model, get these faults in order."""
        self._next.extend(_faults(faults))

    def fail_always(self, model: str, fault: Fault) -> None:
        """Every request for `model` gets `fault` until `heal(model)`."""
        self._always[model] = Fault.from_dict(fault)

    def heal(self, model: str | None = None) -> None:
        """Forget scripts and fail_always for `model`; with no model, for all, and stop chaos."""
        if model is None:
            self._scripts.clear()
            self._always.clear()
            self._next.clear()
            self._chaos = None
        else:
            self._scripts.pop(model, None)
            self._always.pop(model, None)

    def chaos(
        self,
        seed: int | str | None,
        rates: Mapping[str, float] | None = None,
        *,
        retry_after: float | None = 0.05,
        hang_s: float | None = None,
    ) -> None:
        """Give each request a random fault at `rates` (kind -> probability), from a seeded RNG.

        `hang_s=None` holds hung requests until the client gives up.
        """
        self._chaos = Chaos(
            seed, DEFAULT_CHAOS_RATES if rates is None else rates, retry_after, hang_s
        )

    def stop_chaos(self) -> None:
        self._chaos = None

    # --- observation ------------------------------------------------------------------------

    def count(self, model: str | None = None, protocol: str | None = None) -> int:
        return sum(
            n
            for (p, m), n in self._counts.items()
            if (model is None or m == model) and (protocol is None or p == protocol)
        )

    def reset_counts(self) -> None:
        """Forget recorded (and rejected) requests, counts and the injected-fault tally."""
        self._counts.clear()
        self.requests.clear()
        self.rejected.clear()
        self.injected.clear()

    def counts_summary(self) -> dict[str, Any]:
        by_model: Counter[str] = Counter()
        by_protocol: Counter[str] = Counter()
        for (protocol, model), n in self._counts.items():
            by_model[model] += n
            by_protocol[protocol] += n
        return {
            "total": sum(self._counts.values()),
            "by_model": dict(by_model),
            "by_protocol": dict(by_protocol),
            "injected": dict(self.injected),
            "open_connections": self.open_connections,
        }

    # --- request handling -------------------------------------------------------------------

    async def _handle(self, request: HttpRequest, conn: HttpConnection) -> None:
        path = request.path
        if path.startswith("/_fake/"):
            await handle_control(self, request, conn)
            return
        embedding_protocol = _EMBEDDING_ROUTES.get(path)
        embedding_deployment: str | None = None
        if embedding_protocol is None and (match := _AZURE_EMBEDDINGS_PATH.match(path)):
            embedding_protocol, embedding_deployment = "azure", match.group(1)
        if embedding_protocol is not None and request.method == "POST":
            await self._handle_embedding(request, conn, embedding_protocol, embedding_deployment)
            return
        protocol = _ROUTES.get(path)
        deployment: str | None = None
        if protocol is None and (match := _AZURE_PATH.match(path)):
            protocol, deployment = "azure", match.group(1)
        if protocol is None or request.method != "POST":
            await self._handle_other(request, conn)
            return
        wire = WIRES[protocol]
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            await send_error(
                conn, wire, 400, message="We could not parse the JSON body of your request."
            )
            return
        if not isinstance(body, dict):
            await send_error(conn, wire, 400, message="The request body must be an object.")
            return
        try:
            if self._strict and protocol == "anthropic":
                check_fields(body)
            call = wire.parse(body, deployment, strict=self._strict)
        except RequestRejected as exc:
            self._record_rejected(request, protocol, deployment, body, exc.message)
            await send_error(conn, wire, 400, message=exc.message, param=exc.param)
            return
        self._record(request, call, body)
        fault = self._pick_fault(call.model)
        if fault is not None and fault.kind != "ok":
            self.injected[fault.kind] += 1
        spec = self._replies.get(call.model) or self._replies.get(None) or _DEFAULT_REPLY
        await respond(conn, wire, call, fault, spec)

    async def _handle_embedding(
        self,
        request: HttpRequest,
        conn: HttpConnection,
        protocol: str,
        deployment: str | None,
    ) -> None:
        wire = WIRES[protocol]
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            await send_error(conn, wire, 400, message="The request body must be a JSON object.")
            return
        model = deployment if deployment is not None else body.get("model")
        texts = _embedding_texts(body.get("input"))
        problem: str | None = None
        param: str | None = None
        asked: Any = None
        encoding: Any = "float"
        spec = _NO_EMBEDDING_MODEL
        if not isinstance(model, str) or not model:
            problem, param = "you must provide a model parameter", "model"
        elif texts is None:
            problem, param = "'input' must be a string or an array of strings", "input"
        if problem is None:
            assert isinstance(model, str) and texts is not None
            spec = self._embedding_spec(model)
            asked = body.get("dimensions")
            if asked is not None and not spec.takes_dimensions:
                problem, param = "This model does not support specifying dimensions.", "dimensions"
            elif asked is not None and (type(asked) is not int or asked < 1):
                problem, param = f"Invalid value for 'dimensions': {asked!r}", "dimensions"
            encoding = body.get("encoding_format", "float")
            if encoding not in ("float", "base64"):
                problem, param = (
                    f"Invalid value for 'encoding_format': {encoding!r}",
                    "encoding_format",
                )
        if problem is not None:
            shown = model if isinstance(model, str) else ""
            self._record_rejected(request, protocol, deployment, {**body, "model": shown}, problem)
            await send_error(conn, wire, 400, message=problem, param=param)
            return
        assert isinstance(model, str) and texts is not None
        call = Call(
            protocol, model, stream=False, json_mode=False, include_usage=False, messages=[]
        )
        self._record(request, call, body)
        fault = self._pick_fault(model)
        if fault is not None and fault.kind != "ok":
            self.injected[fault.kind] += 1
        length = asked or spec.dimensions
        vectors = [fake_vector(model, text, length) for text in texts]
        tokens = embedding_tokens(texts)
        if protocol == "ollama":
            answer = ollama_embeddings(model, vectors, tokens)
        else:
            answer = openai_embeddings(model, vectors, tokens, encoding=encoding)
        reply = self._replies.get(model) or self._replies.get(None)
        if reply is not None and reply.latency_s:
            await asyncio.sleep(reply.latency_s)
        await respond_embedding(conn, wire, model, fault, wire.encode(answer))

    async def _handle_other(self, request: HttpRequest, conn: HttpConnection) -> None:
        if request.method == "GET" and request.path == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake-upstream"}
                for m in self._known_models()
            ]
            await conn.send(200, json.dumps({"object": "list", "data": data}).encode())
        elif request.method == "GET" and request.path == "/api/tags":
            models = [
                {"name": m, "model": m, "size": 0, "digest": ""} for m in self._known_models()
            ]
            await conn.send(200, json.dumps({"models": models}).encode())
        else:
            # OpenAI's own answer to a path it does not serve.
            error = {
                "message": f"Invalid URL ({request.method} {request.path})",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
            await conn.send(404, json.dumps({"error": error}).encode())

    def _known_models(self) -> list[str]:
        names = {m for m in self._replies if m is not None} | {m for _, m in self._counts}
        return sorted(names)

    async def _bad_http(self, error: BadHttpRequest, conn: HttpConnection) -> None:
        await send_error(conn, WIRES["openai"], error.status, message=str(error))

    def _record(self, request: HttpRequest, call: Call, body: dict[str, Any]) -> None:
        self._counts[(call.protocol, call.model)] += 1
        self.requests.append(
            ReceivedRequest(
                call.protocol,
                call.model,
                request.path,
                call.stream,
                body,
                request.headers,
                request.query,
            )
        )
        if len(self.requests) > self._max_recorded:
            del self.requests[: len(self.requests) - self._max_recorded // 2]

    def _record_rejected(
        self,
        request: HttpRequest,
        protocol: str,
        deployment: str | None,
        body: dict[str, Any],
        message: str,
    ) -> None:
        model = deployment if deployment is not None else body.get("model")
        # Ollama streams unless told not to; the others only when told to.
        stream = (
            body.get("stream", True) is not False
            if protocol == "ollama"
            else body.get("stream") is True
        )
        self.rejected.append(
            ReceivedRequest(
                protocol,
                model if isinstance(model, str) else "",
                request.path,
                stream,
                body,
                request.headers,
                request.query,
                rejection=message,
            )
        )
        if len(self.rejected) > self._max_recorded:
            del self.rejected[: len(self.rejected) - self._max_recorded // 2]

    def _pick_fault(self, model: str) -> Fault | None:
        if self._next:
            return self._next.popleft()
        queue = self._scripts.get(model)
        if queue:
            fault = queue.popleft()
            if not queue:
                del self._scripts[model]
            return fault
        always = self._always.get(model)
        if always is not None:
            return always
        if self._chaos is not None:
            return self._chaos.pick()
        return None


_DEFAULT_REPLY = ReplySpec()
_NO_EMBEDDING_MODEL = EmbeddingModel(DEFAULT_EMBEDDING_DIMENSIONS, True)


def _embedding_texts(value: Any) -> list[str] | None:
    """An embedding request's inputs as texts (token-id arrays as their digits); None for
    anything OpenAI would refuse."""
    if isinstance(value, str):
        return [value] if value else None
    if not isinstance(value, list) or not value:
        return None
    if all(type(token) is int for token in value):
        return [" ".join(map(str, value))]
    texts = []
    for item in value:
        if isinstance(item, str) and item:
            texts.append(item)
        elif isinstance(item, list) and item and all(type(t) is int for t in item):
            texts.append(" ".join(map(str, item)))
        else:
            return None
    return texts


def _faults(faults: Iterable[Fault | Mapping[str, Any]]) -> list[Fault]:
    return [Fault.from_dict(f) if not isinstance(f, Fault) else f for f in faults]


# --- subprocess entry point ---------------------------------------------------------------


async def _serve_until_signalled(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with FakeUpstream(host=host, port=port) as upstream:
        print(f"FAKE_UPSTREAM_URL={upstream.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.testing.fake_upstream",
        description="Serve fake OpenAI/Azure/Anthropic/Ollama APIs; script them via /_fake/.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve_until_signalled(args.host, args.port))
    except OSError as exc:
        print(f"fake_upstream: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
