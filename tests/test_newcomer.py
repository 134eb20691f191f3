"""What a new user meets in the first hour (issue 20): the demo's table, why a provider is
unavailable, `.env` in the policy, a live `gateway explain`, and the app mounted in another."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from gateway import AllProvidersFailed, Router
from gateway._outcomes import AttemptOutcome, BreakerState
from gateway.demo import DemoView
from gateway.errors import ErrorKind
from gateway.server import ServerSettings, create_app
from gateway.testing import FakeUpstream, Fault
from tests.server_harness import ServerProcess, free_port

MESSAGES = [{"role": "user", "content": "Hello"}]


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parent.parent
    environ = dict(os.environ if env is None else env)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )


def without(*names: str) -> dict[str, str]:
    """This process's environment without `names` and without any API key."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in names and not k.endswith("_API_KEY") and not k.startswith("GATEWAY_")
    }


# --- 2. the demo's table ----------------------------------------------------------------------


def test_the_demo_table_has_a_header_over_every_column() -> None:
    view = DemoView()
    view.on_breaker_state(provider="sonnet", state=BreakerState.OPEN)
    for outcome, duration in [
        (AttemptOutcome.SUCCESS, 0.019),
        (AttemptOutcome.SUCCESS, 0.021),
        (AttemptOutcome.SERVER_ERROR, 0.5),
        (AttemptOutcome.BREAKER_OPEN, None),
        (AttemptOutcome.BREAKER_OPEN, None),
        (AttemptOutcome.BREAKER_OPEN, None),
    ]:
        view.on_attempt(
            task="t", provider="sonnet", model="m", outcome=outcome, duration_s=duration
        )
    view.on_retry(provider="sonnet", model="m", kind=ErrorKind.SERVER_ERROR)

    lines = view.render("act").splitlines()
    header = next(line for line in lines if line.startswith("provider"))
    row = next(line for line in lines if line.startswith("sonnet"))
    columns = header.split()
    assert len(columns) == len(row.split()), (header, row)
    # Each value sits under its own header: right-aligned numbers end where their header ends.
    by_name = dict(zip(columns, row.split(), strict=True))
    assert by_name == {
        "provider": "sonnet",
        "served": "2",
        "retries": "1",
        "failed": "1",
        "skipped": "3",
        "p50_ms": "21.0",
        "breaker": "open",
    }
    for name in ("served", "retries", "failed", "skipped", "p50_ms"):
        assert header.index(name) + len(name) == row.index(by_name[name], header.index(name)) + len(
            by_name[name]
        ), name


# --- 5. why a provider was unavailable ----------------------------------------------------------

KEYLESS_POLICY = """\
version: 1
providers:
  sonnet: {type: anthropic, model: claude-sonnet-4-5, api_key: "${GW_TEST_MISSING_KEY}"}
tasks:
  default: {chain: [sonnet]}
"""


async def test_all_providers_failed_says_why_a_provider_was_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GW_TEST_MISSING_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    policy = tmp_path / "routing.yaml"
    policy.write_text(KEYLESS_POLICY)
    async with Router.from_yaml(policy, watch=False, hooks=[]) as router:
        with pytest.raises(AllProvidersFailed) as caught:
            await router.generate(MESSAGES)
    assert caught.value.attempts[0].error == "GW_TEST_MISSING_KEY is not set"
    assert "sonnet (claude-sonnet-4-5) unavailable: GW_TEST_MISSING_KEY is not set" in str(
        caught.value
    )


def test_the_502_body_says_why_a_provider_was_unavailable(tmp_path: Path) -> None:
    policy = tmp_path / "routing.yaml"
    policy.write_text(KEYLESS_POLICY)
    env = without("GW_TEST_MISSING_KEY")
    with ServerProcess(policy, log_path=tmp_path / "server.log", env=env) as server:
        server.wait_ready()
        response = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "default", "messages": MESSAGES},
            timeout=30,
        )
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["attempts"][0]["error"] == "GW_TEST_MISSING_KEY is not set"
    assert "unavailable: GW_TEST_MISSING_KEY is not set" in error["message"]


# --- 6. `.env` feeds the policy's ${VAR} -------------------------------------------------------

ENV_POLICY = """\
version: 1
providers:
  mini: {type: openai, model: gpt-4o-mini, api_key: "${OPENAI_API_KEY}",
         base_url: "${GW_TEST_BASE_URL:-http://127.0.0.1:9/v1}"}
tasks:
  default: {chain: [mini]}
"""


def _mini_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.strip().startswith("mini"))


def test_check_reads_the_key_from_dotenv(tmp_path: Path) -> None:
    (tmp_path / "routing.yaml").write_text(ENV_POLICY)
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-from-dotenv\n")
    result = cli("check", "routing.yaml", cwd=tmp_path, env=without())
    assert result.returncode == 0, result.stderr
    assert _mini_line(result.stdout).rstrip().endswith("available"), result.stdout
    assert "not set" not in result.stdout
    assert "sk-from-dotenv" not in result.stdout + result.stderr


def test_without_dotenv_check_says_the_key_is_not_set(tmp_path: Path) -> None:
    (tmp_path / "routing.yaml").write_text(ENV_POLICY)
    result = cli("check", "routing.yaml", cwd=tmp_path, env=without())
    assert result.returncode == 0, result.stderr
    assert "OPENAI_API_KEY is not set" in _mini_line(result.stdout)


def test_check_takes_the_process_environment_over_dotenv(tmp_path: Path) -> None:
    (tmp_path / "routing.yaml").write_text(ENV_POLICY)
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-from-dotenv\nGW_TEST_BASE_URL=ftp://x\n")
    from_file = cli("check", "routing.yaml", cwd=tmp_path, env=without())
    assert from_file.returncode == 1
    # .env's address is read, and refused (shown as the reference it came from).
    assert "${GW_TEST_BASE_URL}' is not an http(s) URL" in from_file.stderr
    overridden = cli(
        "check",
        "routing.yaml",
        cwd=tmp_path,
        env={**without(), "GW_TEST_BASE_URL": "http://127.0.0.1:9/v1"},
    )
    assert overridden.returncode == 0, overridden.stderr
    assert _mini_line(overridden.stdout).rstrip().endswith("available")


async def test_the_router_reads_dotenv_under_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """.env gives the key and an address; the process's address wins, the key comes through."""
    async with FakeUpstream() as up:
        (tmp_path / "routing.yaml").write_text(ENV_POLICY)
        (tmp_path / ".env").write_text(
            "OPENAI_API_KEY=sk-from-dotenv\nGW_TEST_BASE_URL=http://127.0.0.1:9/v1\n"
        )
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.setenv("GW_TEST_BASE_URL", f"{up.url}/v1")
        async with Router.from_yaml("routing.yaml", watch=False, hooks=[]) as router:
            answer = await router.generate(MESSAGES)
        assert answer.provider == "mini"
        assert up.requests[-1].headers["authorization"] == "Bearer sk-from-dotenv"


# --- 7. `gateway explain --server` ------------------------------------------------------------

LIVE_POLICY = """\
version: 1
defaults:
  retry: {{attempts: 1}}
  breaker: {{fail_max: 2, reset_timeout_s: 600}}
providers:
  mini: {{type: openai, model: gpt-4o-mini, base_url: "{url}/v1", api_key: k}}
  llama: {{type: ollama, model: llama3.2, base_url: "{url}"}}
tasks:
  default: {{chain: [mini, llama]}}
"""


def test_explain_without_server_says_its_breakers_are_fresh(tmp_path: Path) -> None:
    (tmp_path / "routing.yaml").write_text(LIVE_POLICY.format(url="http://127.0.0.1:9"))
    result = cli("explain", "default", cwd=tmp_path, env=without())
    assert result.returncode == 0, result.stderr
    assert "fresh breakers" in result.stdout
    assert "--server" in result.stdout
    assert "configured" in result.stdout


def test_explain_server_shows_the_running_servers_open_breaker(tmp_path: Path) -> None:
    with FakeUpstream.spawn() as fake:
        policy = tmp_path / "routing.yaml"
        policy.write_text(LIVE_POLICY.format(url=fake.url))
        env = {**without(), "GATEWAY_API_KEYS": "client-key"}
        with ServerProcess(policy, log_path=tmp_path / "server.log", env=env) as server:
            server.wait_ready()
            fake.client.fail_always("gpt-4o-mini", Fault.server_error())
            for _ in range(3):
                answered = httpx.post(
                    server.url + "/v1/chat/completions",
                    json={"model": "default", "messages": MESSAGES},
                    headers={"authorization": "Bearer client-key"},
                    timeout=30,
                )
                assert answered.status_code == 200, answered.text

            fresh = cli("explain", "default", cwd=tmp_path, env=without())
            live = cli(
                "explain",
                "default",
                "--server",
                server.url,
                cwd=tmp_path,
                env={**without(), "GATEWAY_API_KEY": "client-key"},
            )
            by_flag = cli(
                "explain",
                "default",
                "--server",
                server.url,
                "--api-key",
                "client-key",
                "--json",
                cwd=tmp_path,
                env=without(),
            )
            refused = cli("explain", "default", "--server", server.url, cwd=tmp_path, env=without())

    def row(stdout: str, provider: str) -> str:
        return next(line for line in stdout.splitlines() if f" {provider} " in line)

    assert "breaker closed" in row(fresh.stdout, "mini")
    assert live.returncode == 0, live.stderr
    assert server.url in live.stdout
    assert "breaker open" in row(live.stdout, "mini")
    assert "breaker closed" in row(live.stdout, "llama")
    assert "fresh breakers" not in live.stdout

    assert by_flag.returncode == 0, by_flag.stderr
    rows = json.loads(by_flag.stdout)
    assert [(r["provider"], r["breaker"]) for r in rows] == [("mini", "open"), ("llama", "closed")]

    assert refused.returncode == 1
    assert "401" in refused.stderr and "GATEWAY_API_KEY" in refused.stderr
    assert "client-key" not in refused.stderr + live.stdout + by_flag.stdout


# --- 8. the app mounted in another -------------------------------------------------------------


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[str]:
    """`app` under a real uvicorn on 127.0.0.1, with its own lifespan (which, as Starlette's
    does, does not run a mounted app's)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def _mount_policy(tmp_path: Path, url: str) -> Path:
    policy = tmp_path / "routing.yaml"
    policy.write_text(
        "version: 1\nproviders:\n"
        f'  mini: {{type: openai, model: gpt-4o-mini, base_url: "{url}/v1", api_key: k}}\n'
        "tasks:\n  default: {chain: [mini]}\n"
    )
    return policy


async def test_the_app_mounted_under_a_prefix_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.server")
    async with FakeUpstream() as up:
        inner = create_app(_mount_policy(tmp_path, up.url), settings=ServerSettings())
        outer = Starlette(routes=[Mount("/llm", app=inner)])
        try:
            async with running(outer) as base:
                async with openai.AsyncOpenAI(base_url=f"{base}/llm/v1", api_key="-") as client:
                    # Concurrent first requests: the app's state is set up once, for all.
                    answers = await asyncio.gather(
                        *(
                            client.chat.completions.create(model="default", messages=MESSAGES)  # type: ignore[arg-type]
                            for _ in range(5)
                        )
                    )
                async with httpx.AsyncClient() as http:
                    ready = await http.get(f"{base}/llm/readyz")
        finally:
            # Started on first use; its lifespan, run now, finds it started and closes it.
            async with inner.router.lifespan_context(inner):
                pass
    assert all(a.choices[0].message.content for a in answers)
    assert ready.status_code == 200, ready.text
    started = [r for r in caplog.records if r.getMessage().startswith("gateway serving policy")]
    assert len(started) == 1
    assert getattr(inner.state, "gateway", None) is None


async def test_the_outer_apps_lifespan_closes_the_mounted_app(tmp_path: Path) -> None:
    async with FakeUpstream() as up:
        inner = create_app(_mount_policy(tmp_path, up.url), settings=ServerSettings())

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with inner.router.lifespan_context(inner):
                yield

        outer = Starlette(routes=[Mount("/llm", app=inner)], lifespan=lifespan)
        async with running(outer) as base:
            async with httpx.AsyncClient() as http:
                answered = await http.post(
                    f"{base}/llm/v1/chat/completions",
                    json={"model": "default", "messages": MESSAGES},
                )
            assert up.open_connections > 0  # the provider's pool keeps its connection
        assert answered.status_code == 200, answered.text
        # Closed by the outer lifespan: the state is gone and the provider's pool closed.
        assert getattr(inner.state, "gateway", None) is None
        for _ in range(1000):
            if up.open_connections == 0:
                break
            await asyncio.sleep(0.005)
        assert up.open_connections == 0


REPO = Path(__file__).resolve().parent.parent
USER_DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
"""What a user reads. docs/engineering/ is the engineers' log and may speak of history."""

WORK_LOG = [
    re.compile(r"\bthe seed\b", re.IGNORECASE),
    re.compile(r"\bissue #?\d+\b", re.IGNORECASE),
    re.compile(r"`(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}`"),  # a commit id
]


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: p.name)
def test_user_docs_speak_of_the_product_not_its_history(doc: Path) -> None:
    text = doc.read_text()
    found = [m.group(0) for pattern in WORK_LOG for m in pattern.finditer(text)]
    assert found == [], f"{doc.name}: {found}"


def test_readme_says_where_the_gateway_command_is_and_it_answers_help() -> None:
    readme = USER_DOCS[0].read_text()
    assert ".venv/bin/gateway" in readme
    assert "source .venv/bin/activate" in readme.replace("`source\n", "`source ")
    command = Path(sys.executable).parent / "gateway"
    result = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for subcommand in ("serve", "check", "explain", "demo"):
        assert subcommand in result.stdout
