"""FakeUpstream's control API under /_fake/: script a FakeUpstream that runs in another process.

    GET  /_fake/health                       {"ok": true}
    POST /_fake/reply        {"model", "text", "cached_input_tokens", "latency_s", "chunk_delay_s",
                              "tool_calls": [{"name", "arguments"}], "refusal"}
    POST /_fake/script       {"model": "m", "faults": [{"kind": "rate_limit", "retry_after": 1}]}
    POST /_fake/script_next  {"faults": [...]}
    POST /_fake/fail_always  {"model": "m", "fault": {"kind": "server_error"}}
    POST /_fake/heal         {"model": "m"}   (no model: heal everything, stop chaos)
    POST /_fake/chaos        {"seed": 1, "rates": {...}, "retry_after": 0.05, "hang_s": null}
    POST /_fake/stop_chaos
    GET  /_fake/counts?model=m&protocol=openai
    POST /_fake/reset                        forget counts and recorded requests
    GET  /_fake/requests?limit=100           recorded requests, credentials redacted

Errors answer 400 (or 404 for an unknown route) with {"error": "..."} naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from gateway.testing._faults import Fault
from gateway.testing._http import HttpConnection, HttpRequest


class Recorded(Protocol):
    @property
    def model(self) -> str | None: ...

    def to_dict(self) -> dict[str, Any]: ...


class Scriptable(Protocol):
    """What the control API drives: the scripting methods of `FakeUpstream`."""

    @property
    def requests(self) -> Sequence[Recorded]: ...

    def reply(
        self,
        model: str | None,
        text: str | None = None,
        *,
        cached_input_tokens: int = 0,
        latency_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        tool_calls: Sequence[Mapping[str, Any]] | None = None,
        refusal: str | None = None,
    ) -> None: ...

    def embedding_model(
        self, model: str, *, dimensions: int, takes_dimensions: bool | None = None
    ) -> None: ...

    def script(self, model: str, *faults: Fault) -> None: ...

    def script_next(self, *faults: Fault) -> None: ...

    def fail_always(self, model: str, fault: Fault) -> None: ...

    def heal(self, model: str | None = None) -> None: ...

    def chaos(
        self,
        seed: int | str | None,
        rates: Mapping[str, float] | None = None,
        *,
        retry_after: float | None = 0.05,
        hang_s: float | None = None,
    ) -> None: ...

    def stop_chaos(self) -> None: ...

    def count(self, model: str | None = None, protocol: str | None = None) -> int: ...

    def reset_counts(self) -> None: ...

    def counts_summary(self) -> dict[str, Any]: ...


_REPLY_FIELDS = {
    "model",
    "text",
    "cached_input_tokens",
    "latency_s",
    "chunk_delay_s",
    "tool_calls",
    "refusal",
}
_CHAOS_FIELDS = {"seed", "rates", "retry_after", "hang_s"}


class ControlError(ValueError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def handle_control(up: Scriptable, request: HttpRequest, conn: HttpConnection) -> None:
    route = request.path.removeprefix("/_fake/").strip("/")
    try:
        body = _json_object(request.body)
        result = _dispatch(up, request.method, route, body, request.query)
        status = 200
    except ControlError as exc:
        result, status = {"error": str(exc)}, exc.status
    except (ValueError, TypeError) as exc:
        result, status = {"error": str(exc)}, 400
    await conn.send(status, json.dumps(result).encode())


def _json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ControlError(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _dispatch(
    up: Scriptable, method: str, route: str, body: dict[str, Any], query: dict[str, str]
) -> Any:
    handler = _ROUTES.get((method, route))
    if handler is None:
        known = ", ".join(f"{m} /_fake/{r}" for m, r in _ROUTES)
        raise ControlError(f"no control route {method} /_fake/{route}; known: {known}", 404)
    return handler(up, body, query)


def _only(body: dict[str, Any], allowed: set[str], route: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ControlError(
            f"/_fake/{route}: unknown field(s) {unknown}; allowed: {sorted(allowed)}"
        )


def _model(body: dict[str, Any], route: str, *, required: bool) -> str | None:
    model = body.get("model")
    if model is None and not required:
        return None
    if not isinstance(model, str) or not model:
        raise ControlError(f"/_fake/{route}: model must be a non-empty string, got {model!r}")
    return model


def _fault_list(body: dict[str, Any], route: str) -> list[Fault]:
    faults = body.get("faults")
    if not isinstance(faults, list):
        raise ControlError(
            f"/_fake/{route}: faults must be a list like [{{'kind': 'rate_limit'}}], got {faults!r}"
        )
    parsed = []
    for i, item in enumerate(faults):
        try:
            parsed.append(Fault.from_dict(item))
        except ValueError as exc:
            raise ControlError(f"/_fake/{route}: faults[{i}]: {exc}") from exc
    return parsed


def _health(up: Scriptable, body: dict[str, Any], query: dict[str, str]) -> Any:
    return {"ok": True}


def _reply(up: Scriptable, body: dict[str, Any], query: dict[str, str]) -> Any:
    _only(body, _REPLY_FIELDS, "reply")
    up.reply(
        _model(body, "reply", required=False),
        body.get("text"),
        cached_input_tokens=body.get("cached_input_tokens", 0),
        latency_s=body.get("latency_s", 0.0),
        chunk_delay_s=body.get("chunk_delay_s", 0.0),
        tool_calls=body.get("tool_calls"),
        refusal=body.get("refusal"),
    )
    return {"ok": True}


def _embedding_model(up: Scriptable, body: dict[str, Any], query: dict[str, str]) -> Any:
    _only(body, {"model", "dimensions", "takes_dimensions"}, "embedding_model")
    model = _model(body, "embedding_model", required=True)
    assert model is not None
    dimensions = body.get("dimensions")
    if type(dimensions) is not int or dimensions < 1:
        raise ControlError(
            f"/_fake/embedding_model: dimensions must be a whole number >= 1, got {dimensions!r}"
        )
    takes = body.get("takes_dimensions")
    if takes is not None and not isinstance(takes, bool):
        raise ControlError(
            f"/_fake/embedding_model: takes_dimensions must be true, false or null, got {takes!r}"
        )
    up.embedding_model(model, dimensions=dimensions, takes_dimensions=takes)
    return {"ok": True}


def _script(up: Scriptable, body: dict[str, Any], query: dict[str, str]) -> Any:
    _only(body, {"model", "faults"}, "script")
    model = _model(body, "script", required=True)
    assert model is not None
    up.script(model, *_fault_list(body, "script"))
    return {"ok": True}


def _script_next(up: Scriptable, body: dict[str, Any], query: dict[str, str]) -> Any:
    _only(body, {"faults"}, "script_next")
    up.script_next(*_fault_list(body, "script_next"))
    return {"ok": True}


def _fail_always(up: Scriptable, body: dict[str, Any], query: dict[str, str]) -> Any:
    _only(body, {"model", "fault"}, "fail_always")
    model = _model(body, "fail_always", required=True)
    assert model is not None
    try:
        fault = Fault.from_dict(body.get("fault"))
    except ValueError as exc:
        raise ControlError(f"/_fake/fail_always: fault: {exc}") from exc
    up.fail_always(model, fault)
    return {"ok": True}


def _heal(up: Scriptable, body: dict[str, Any], query: dict[str, str]) -> Any:
    _only(body, {"model"}, "heal")
    up.heal(_model(body, "heal", required=False))
    return {"ok": True}


def _chaos(up: Scriptable, body: dict[str, Any], query: dict[str, str]) -> Any:
    _only(body, _CHAOS_FIELDS, "chaos")
    rates = body.get("rates")
    if rates is not None and not isinstance(rates, dict):
        raise ControlError(f"/_fake/chaos: rates must be an object of kind -> rate, got {rates!r}")
    up.chaos(
        body.get("seed"),
        rates,
        retry_after=body.get("retry_after", 0.05),
        hang_s=body.get("hang_s"),
    )
    return {"ok": True}


def _stop_chaos(up: Scriptable, body: dict[str, Any], query: dict[str, str]) -> Any:
    up.stop_chaos()
    return {"ok": True}


def _counts(up: Scriptable, body: dict[str, Any], query: dict[str, str]) -> Any:
    summary = up.counts_summary()
    summary["count"] = up.count(query.get("model"), query.get("protocol"))
    return summary


def _reset(up: Scriptable, body: dict[str, Any], query: dict[str, str]) -> Any:
    up.reset_counts()
    return {"ok": True}


def _requests(up: Scriptable, body: dict[str, Any], query: dict[str, str]) -> Any:
    limit_text = query.get("limit", "100")
    try:
        limit = int(limit_text)
    except ValueError as exc:
        raise ControlError(
            f"/_fake/requests: limit must be an integer, got {limit_text!r}"
        ) from exc
    model = query.get("model")
    chosen = [r for r in up.requests if model is None or r.model == model]
    return [r.to_dict() for r in chosen[-limit:]] if limit > 0 else []


_Route = Callable[[Scriptable, dict[str, Any], dict[str, str]], Any]

_ROUTES: dict[tuple[str, str], _Route] = {
    ("GET", "health"): _health,
    ("POST", "reply"): _reply,
    ("POST", "embedding_model"): _embedding_model,
    ("POST", "script"): _script,
    ("POST", "script_next"): _script_next,
    ("POST", "fail_always"): _fail_always,
    ("POST", "heal"): _heal,
    ("POST", "chaos"): _chaos,
    ("POST", "stop_chaos"): _stop_chaos,
    ("GET", "counts"): _counts,
    ("POST", "reset"): _reset,
    ("GET", "requests"): _requests,
}
