"""A lean install: `pip install gateway` brings the router's core, and the router works on it.

The suite runs in a venv with every extra installed. To show what works without them, the
subprocess tests refuse every package a core-only install would not have (see
`import_blocker`): the packages outside the dependency closure of the core requirements, as
the installed distribution's metadata declares them.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import re
import sys
from pathlib import Path

from import_blocker import run_without
from packaging.requirements import Requirement

from gateway.testing import FakeUpstream

CORE = {
    "pydantic",
    "pydantic-settings",
    "pyyaml",
    "tenacity",
    "pybreaker",
    "prometheus-client",
    "aiohttp",
    "msgspec",
}
EXTRAS = {
    "openai": {"openai"},
    "anthropic": {"anthropic"},
    "litellm": {"litellm"},
    "server": {"fastapi", "uvicorn", "uvloop", "httptools"},
    "redis": {"redis"},
    "otel": {"opentelemetry-api", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"},
}
# What a lean install must do without, by import name: each extra's packages, what they alone
# bring (starlette, the SDKs' httpx2), and httpx, which only the tests use.
OPTIONAL_IMPORTS = {
    "openai",
    "anthropic",
    "litellm",
    "fastapi",
    "starlette",
    "uvicorn",
    "redis",
    "opentelemetry",
    "httpx2",
    "httpx",
}
# A fresh venv has these whatever was installed into it.
VENV_TOOLS = {"pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def gateway_requirements() -> list[Requirement]:
    return [Requirement(text) for text in importlib.metadata.requires("gateway") or []]


def core_closure() -> set[str]:
    """Canonical names of the distributions `pip install gateway` installs: gateway and its
    unconditional requirements, transitively, as the installed metadata declares them."""
    names: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, frozenset[str]]] = [("gateway", frozenset())]
    while todo:
        name, extras = todo.pop()
        if (canonical(name), extras) in visited:
            continue
        visited.add((canonical(name), extras))
        names.add(canonical(name))
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement for another platform, not installed here
        for text in requirements:
            requirement = Requirement(text)
            marker = requirement.marker
            wanted = marker is None or any(
                marker.evaluate({"extra": extra}) for extra in {"", *extras}
            )
            if wanted:
                todo.append((requirement.name, frozenset(requirement.extras)))
    return names


def lean_blocked_imports() -> set[str]:
    """Top-level import names installed here that a core-only install would not have."""
    keep = core_closure() | VENV_TOOLS
    blocked = set()
    for top, distributions in importlib.metadata.packages_distributions().items():
        if top in sys.stdlib_module_names:
            continue
        if not {canonical(distribution) for distribution in distributions} & keep:
            blocked.add(top)
    return blocked


def test_unconditional_requirements_are_exactly_the_core() -> None:
    requirements = gateway_requirements()

    unconditional = {canonical(r.name) for r in requirements if r.marker is None}

    assert unconditional == CORE
    conditional = [r for r in requirements if r.marker is not None]
    assert all("extra" in str(r.marker) for r in conditional), conditional


def test_each_extra_installs_its_packages_and_all_installs_every_extra() -> None:
    requirements = [r for r in gateway_requirements() if r.marker is not None]
    provided = set(importlib.metadata.metadata("gateway").get_all("Provides-Extra") or [])

    assert provided >= {*EXTRAS, "all", "test", "bench"}
    for extra, packages in EXTRAS.items():
        names = {canonical(r.name) for r in requirements if r.marker.evaluate({"extra": extra})}
        assert names == packages, extra
    everything = [r for r in requirements if r.marker.evaluate({"extra": "all"})]
    assert [(r.name, r.extras) for r in everything] == [("gateway", set(EXTRAS))]


def test_the_lean_install_lacks_every_optional_package() -> None:
    assert lean_blocked_imports() >= OPTIONAL_IMPORTS


def test_router_imports_without_optional_packages() -> None:
    blocked = lean_blocked_imports()
    code = (
        "import sys\nfrom gateway import Router\nimport gateway._router\nprint(Router.__name__)\n"
    )

    result = run_without(blocked, code)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Router"


LEAN_ROUTER = """
import asyncio, json, os, sys
from gateway import Router

MESSAGES = [{"role": "user", "content": "Say hello"}]


async def main() -> None:
    router = Router.from_yaml(os.environ["LEAN_POLICY"], watch=False)
    try:
        reply = await router.generate(MESSAGES, task="default")
        deltas = [delta async for delta in router.stream(MESSAGES, task="default")]
    finally:
        await router.aclose()
    print(json.dumps({
        "text": reply.text,
        "provider": reply.provider,
        "model": reply.model,
        "output_tokens": reply.usage.output_tokens,
        "cost_usd": reply.cost_usd,
        "deltas": deltas,
    }))


asyncio.run(main())
"""


async def test_openai_provider_serves_a_request_and_a_stream_without_optional_packages(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.reply("gpt-4o-mini", "Hello from a lean install")
    policy = tmp_path / "routing.yaml"
    policy.write_text(
        "version: 1\n"
        "providers:\n"
        "  mini: {type: openai, model: gpt-4o-mini,"
        f' base_url: "{upstream.openai_base_url}", api_key: lean-key}}\n'
        "tasks:\n"
        "  default: {chain: [mini]}\n",
        encoding="utf-8",
    )
    blocked = lean_blocked_imports()

    result = await asyncio.to_thread(
        run_without, blocked, LEAN_ROUTER, env={"LEAN_POLICY": str(policy)}
    )

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["provider"] == "mini"
    assert answer["model"] == "gpt-4o-mini"
    assert answer["text"] == "Hello from a lean install"
    assert "".join(answer["deltas"]) == "Hello from a lean install"
    assert len(answer["deltas"]) > 1
    assert answer["output_tokens"] > 0
    # Priced from the packaged snapshot: litellm is not there to read.
    assert answer["cost_usd"] > 0
    assert [(r.protocol, r.stream) for r in upstream.requests] == [
        ("openai", False),
        ("openai", True),
    ]
    assert {r.headers["authorization"] for r in upstream.requests} == {"Bearer lean-key"}
