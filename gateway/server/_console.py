"""The ops console at `/console`: live chains and breakers, recent requests, the policy editor.

The page is plain HTML, CSS and JavaScript shipped in `gateway/server/console/` (no external
asset, nothing built at install time). It reads `/console/api/*` with the key the operator
typed: the views need a client key (none in open mode from loopback, as every client route),
anything that changes state needs an admin key, checked here by the same dependencies as the
rest of the server. Every change is logged as an audit line naming the key by its fingerprint
(the first hex digits of its SHA-256), never the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response

from gateway.errors import PolicyError, UnknownTaskError
from gateway.server import _monitoring as monitoring
from gateway.server._auth import Access, bearer_key
from gateway.server._console_feed import Action, ConsoleFeed, RecentRequests
from gateway.server._console_policy import (
    Conflict,
    parse_draft,
    policy_diff,
    problem,
    replace_file,
    sha256_of,
)
from gateway.server._errors import error_response
from gateway.server._state import (
    KeyFirstRoute,
    ServerState,
    require_admin,
    server_state,
)

log = logging.getLogger("gateway.server")

PAGE_FILES = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}
# The page runs only its own files: a policy or provider name shown in it cannot run script.
PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}


class Draft(BaseModel):
    text: str = Field(description="The whole policy file as the editor holds it.")


class ApplyDraft(Draft):
    loaded_sha256: str = Field(description="The sha256 of the file when the editor loaded it.")


def _page_file(name: str) -> bytes:
    return resources.files("gateway.server").joinpath("console", name).read_bytes()


def identity(request: Request) -> str:
    """Who sent a request, for the audit line: the key's fingerprint, never the key."""
    key = bearer_key(request.headers.get("authorization"))
    peer = request.client.host if request.client else "unknown"
    if key is None:
        return f"no key (open mode) from {peer}"
    return f"key sha256:{hashlib.sha256(key.encode()).hexdigest()[:12]} from {peer}"


def _console(state: ServerState) -> ConsoleFeed:
    assert state.console is not None, "the console feed is built with the server state"
    return state.console


def _path(state: ServerState) -> Path:
    assert state.policy_path is not None, "the server state knows its policy file"
    return Path(state.policy_path)


async def apply_action(state: ServerState, action: Action) -> None:
    """One operator action, on this worker's router."""
    kind = action.get("action")
    if kind == "reload":
        with contextlib.suppress(PolicyError):  # logged by reload(); the old policy serves
            await state.reload("console")
        return
    candidate = state.router.candidates.get(str(action.get("provider")))
    if candidate is None:
        return
    if kind == "force_open":
        candidate.breaker.force_open()
    elif kind == "reset":
        candidate.breaker.reset()


@contextlib.asynccontextmanager
async def console_feed(state: ServerState, recent: RecentRequests) -> AsyncIterator[ConsoleFeed]:
    """The console's part of a worker while it serves (see `ConsoleFeed`)."""

    async def apply(action: Action) -> None:
        await apply_action(state, action)

    feed = ConsoleFeed(state.router, recent=recent, apply_action=apply)
    async with feed.running():
        yield feed


def live_view(state: ServerState) -> dict[str, Any]:
    """Each task's order now, each provider's breaker and load over every worker, and the
    figures of the last minutes."""
    feed = _console(state)
    router = state.router
    policy = router.policy
    providers, workers = feed.providers()
    figures = feed.figures.read()
    tasks = []
    for name in policy.tasks:
        try:
            report = monitoring.task_order_report(policy, name, router.explain(name))
        except UnknownTaskError:  # a reload between reading the names and explaining
            continue
        row = report.model_dump(mode="json")
        row.update(figures["tasks"].get(name, {"requests_total": 0, "cost_usd_total": 0.0}))
        tasks.append(row)
    for name, row in providers.items():
        row.update(
            figures["providers"].get(
                name,
                {
                    "calls": 0,
                    "failures": 0,
                    "error_rate": None,
                    "latency_avg_s": None,
                    "cost_usd_total": 0.0,
                },
            )
        )
    return {
        "policy_sha256": policy.sha256,
        "workers": workers,
        "window_s": figures["window_s"],
        "cost_usd_total": figures["cost_usd_total"],
        "tasks": tasks,
        "providers": providers,
    }


def add_console_routes(app: FastAPI) -> None:
    """Adds the console's page and its API to `app`. The API is the page's own, not a public
    contract, so it stays out of the OpenAPI document."""
    admin = [Depends(require_admin)]
    api = APIRouter(route_class=KeyFirstRoute)

    @app.get("/console", include_in_schema=False)
    async def page() -> Response:
        return Response(
            _page_file("index.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS
        )

    @app.get("/console/static/{name}", include_in_schema=False)
    async def page_file(name: str) -> Response:
        media_type = PAGE_FILES.get(name)
        if media_type is None:
            return error_response(f"no console file named {name!r}", status=404, code="not_found")
        return Response(_page_file(name), media_type=media_type, headers=PAGE_HEADERS)

    @api.get("/console/api/whoami", include_in_schema=False)
    async def whoami(request: Request) -> dict[str, Any]:
        """Whether the key may change things (the page greys nothing out on it: the server
        refuses what the key may not do)."""
        state = server_state(request)
        key = bearer_key(request.headers.get("authorization"))
        peer = request.client.host if request.client else None
        admin = state.keys.admin(key, peer) is Access.GRANTED
        return {"admin": admin, "identity": identity(request)}

    @api.get("/console/api/live", include_in_schema=False)
    async def live(request: Request) -> dict[str, Any]:
        return live_view(server_state(request))

    @api.get("/console/api/requests", include_in_schema=False)
    async def recent_requests(
        request: Request, task: str | None = None, outcome: str | None = None, limit: int = 100
    ) -> dict[str, Any]:
        rows = _console(server_state(request)).requests()
        tasks = sorted({row["task"] for row in rows})
        outcomes = sorted({row["outcome"] for row in rows})
        if task:
            rows = [row for row in rows if row["task"] == task]
        if outcome:
            rows = [row for row in rows if row["outcome"] == outcome]
        return {"tasks": tasks, "outcomes": outcomes, "requests": rows[: max(1, min(limit, 500))]}

    @api.get("/console/api/policy", dependencies=admin, include_in_schema=False)
    async def policy_file(request: Request) -> dict[str, Any]:
        """The file as written (it may hold keys, hence admin only), and its sha256."""
        path = _path(server_state(request))
        data = path.read_bytes()
        return {
            "path": str(path),
            "text": data.decode("utf-8", "replace"),
            "sha256": sha256_of(data),
        }

    @api.post("/console/api/policy/check", include_in_schema=False)
    async def check(request: Request, draft: Draft) -> dict[str, Any]:
        state = server_state(request)
        try:
            parse_draft(draft.text, str(_path(state)))
        except PolicyError as exc:
            return {"valid": False, "problem": problem(exc)}
        return {"valid": True, "problem": None}

    @api.post("/console/api/policy/diff", include_in_schema=False)
    async def diff(request: Request, draft: Draft) -> Response:
        state = server_state(request)
        try:
            new = parse_draft(draft.text, str(_path(state)))
        except PolicyError as exc:
            return JSONResponse({"valid": False, "problem": problem(exc)}, status_code=422)
        return JSONResponse({"valid": True, "diff": policy_diff(state.router.policy, new)})

    @api.post("/console/api/policy/apply", dependencies=admin, include_in_schema=False)
    async def apply(request: Request, draft: ApplyDraft) -> Response:
        state = server_state(request)
        path = _path(state)
        try:
            parse_draft(draft.text, str(path))
        except PolicyError as exc:
            return JSONResponse({"applied": False, "problem": problem(exc)}, status_code=422)
        try:
            # Off the loop: the lock may wait for another worker's apply.
            old = await asyncio.to_thread(replace_file, path, draft.text, draft.loaded_sha256)
        except Conflict as exc:
            return error_response(
                f"the policy file changed on disk since you loaded it (you loaded sha256 "
                f"{exc.loaded_sha256[:12]}, it is now {exc.current_sha256[:12]}): nothing was "
                "written. Reload the file in the editor, merge your change, and apply again",
                status=409,
                code="policy_changed_on_disk",
            )
        new = sha256_of(draft.text.encode())
        log.warning(
            "audit: policy %s applied from the console by %s (sha256 %s -> %s)",
            path,
            identity(request),
            old,
            new,
        )
        try:
            await state.reload("console")
        except PolicyError as exc:  # valid a moment ago: an environment variable changed
            return JSONResponse({"applied": False, "problem": problem(exc)}, status_code=422)
        _console(state).record_action({"action": "reload", "provider": None})
        return JSONResponse({"applied": True, "old_sha256": old, "sha256": new})

    async def breaker_action(request: Request, provider: str, kind: str) -> Response:
        state = server_state(request)
        if provider not in state.router.candidates:
            return error_response(
                f"no provider named {provider!r}; the console's live view lists them",
                status=404,
                code="provider_not_found",
                param="provider",
            )
        action: Action = {"action": kind, "provider": provider}
        await apply_action(state, action)
        if state.router.policy.state.backend != "redis":
            # Shared state carries it to every replica itself; otherwise each worker applies it.
            _console(state).record_action(action)
        log.warning(
            "audit: breaker %s %s from the console by %s",
            provider,
            "forced open" if kind == "force_open" else "reset",
            identity(request),
        )
        breaker = state.router.candidates[provider].breaker
        return JSONResponse(
            {"provider": provider, "breaker": breaker.state, "forced": breaker.forced}
        )

    @api.post(
        "/console/api/breakers/{provider}/force-open",
        dependencies=admin,
        include_in_schema=False,
    )
    async def force_open(request: Request, provider: str) -> Response:
        return await breaker_action(request, provider, "force_open")

    @api.post(
        "/console/api/breakers/{provider}/reset",
        dependencies=admin,
        include_in_schema=False,
    )
    async def reset(request: Request, provider: str) -> Response:
        return await breaker_action(request, provider, "reset")

    app.include_router(api)
