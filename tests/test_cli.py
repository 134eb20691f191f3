"""The `gateway` command line: check, explain, and the demo's story."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.demo import run_demo

ROOT = Path(__file__).resolve().parent.parent


def gateway(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def clean_env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["OPENAI_API_KEY"] = "sk-test-cli"
    return env


def test_check_prints_each_chain_with_availability() -> None:
    result = gateway("check", "routing.yaml", env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "routing.yaml: valid" in result.stdout
    assert "task summarize" in result.stdout
    # The Anthropic key is unset in this environment, the OpenAI one is set.
    sonnet = next(line for line in result.stdout.splitlines() if line.strip().startswith("sonnet"))
    mini = next(line for line in result.stdout.splitlines() if line.strip().startswith("mini"))
    assert "unavailable" in sonnet and "ANTHROPIC_API_KEY" in sonnet
    assert mini.rstrip().endswith("available")
    assert "sk-test-cli" not in result.stdout + result.stderr


def test_check_rejects_an_invalid_file_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "routing.yaml"
    bad.write_text(
        "version: 1\nproviders:\n  a: {type: openai, model: m, api_key: k}\n"
        "tasks:\n  t: {chain: [a], deadline_s: 0}\n"
    )
    result = gateway("check", str(bad))
    assert result.returncode == 1
    assert "tasks.t.deadline_s" in result.stderr
    assert "line 5" in result.stderr


def test_explain_shows_order_breakers_and_prices() -> None:
    result = gateway("explain", "extract", "--policy", "routing.yaml", env=clean_env())
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()[:2] in {"1.", "2."}]
    # extract is `cheapest`: gpt-4o-mini before claude-sonnet-4-5.
    assert "mini" in lines[0] and "sonnet" in lines[1]
    assert "breaker closed" in lines[0]
    assert "$0.15/$0.60 per Mtok" in lines[0]


def test_explain_json_and_unknown_task_without_default(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\nproviders:\n  a: {type: ollama, model: llama3.2}\ntasks:\n  t: {chain: [a]}\n"
    )
    result = gateway("explain", "nope", "--policy", str(policy))
    assert result.returncode == 1
    assert "t" in result.stderr and "nope" in result.stderr


async def test_the_demo_tells_its_story() -> None:
    out = io.StringIO()
    view = await run_demo(out, requests_per_act=8)
    text = out.getvalue()
    assert view.requests["success"] == view.requests.total() > 0
    assert view.retries["sonnet"] >= 2  # the rate-limit act, Retry-After honoured
    assert view.fallbacks[("sonnet", "mini")] > 0  # the outage act
    assert [t.split()[-1] for t in view.transitions] == ["open", "half_open", "closed"]
    assert view.cost_usd > 0
    assert "summary:" in text and "4/4" in text


@pytest.mark.parametrize("command", ["check", "explain", "demo", "serve"])
def test_every_command_has_help(command: str) -> None:
    result = gateway(command, "--help")
    assert result.returncode == 0
    assert "usage: gateway" in result.stdout


def test_explain_and_check_show_the_fall_through_rules(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(
        "version: 1\n"
        "providers:\n"
        "  a: {type: openai, model: gpt-4o-mini, api_key: x}\n"
        "  b: {type: openai, model: gpt-4o, api_key: x}\n"
        "tasks:\n"
        "  chat: {chain: [a], stop_on: [content_filter],"
        " redirect: {context_length: {task: long}}}\n"
        "  long: {chain: [b]}\n"
    )
    explained = gateway("explain", "chat", "--policy", str(path))
    assert explained.returncode == 0, explained.stderr
    assert (
        "on a failure: stops on content_filter; context_length goes to task long; any other "
        "falls through to the next" in explained.stdout
    )
    checked = gateway("check", str(path))
    assert "task chat (ordered; stops on content_filter; context_length goes to task long):" in (
        checked.stdout
    )
    plain = gateway("explain", "long", "--policy", str(path))
    assert "on a failure: falls through to the next" in plain.stdout


def test_check_refuses_a_provider_that_cannot_embed_in_an_embedding_task(tmp_path: Path) -> None:
    # As the router and `gateway serve` load it: the same file, the same refusal.
    policy = tmp_path / "routing.yaml"
    policy.write_text(
        "version: 1\nproviders:\n"
        "  small: {type: openai, model: text-embedding-3-small, api_key: k}\n"
        "  claude: {type: anthropic, model: claude-sonnet-4-5, api_key: k}\n"
        "tasks:\n  search: {kind: embedding, chain: [small, claude]}\n"
    )
    result = gateway("check", str(policy))
    assert result.returncode == 1, result.stdout
    assert "provider 'claude' (type anthropic) cannot embed" in result.stderr
    assert "tasks.search.chain[1]" in result.stderr
