"""The routing policy: loading, resolving, env substitution, errors that say where and why."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import ErrorKind, PolicyError, UnknownTaskError
from gateway.policy import (
    BreakerPolicy,
    ChainEntry,
    Policy,
    RetryPolicy,
    load_policy,
    main,
    parse_policy,
    policy_json_schema,
    read_policy_yaml,
)
from gateway.providers import LLMFactory

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [
    ROOT / "routing.yaml",
    ROOT / "policies" / "development.yaml",
    ROOT / "policies" / "testing.yaml",
    ROOT / "policies" / "production.yaml",
]
SCHEMA_FILE = ROOT / "policies" / "routing.schema.json"

EXAMPLE = textwrap.dedent(
    """\
    version: 1
    defaults:                        # apply to every provider unless it overrides them
      timeout_s: 30                  # one attempt
      retry: {attempts: 3, initial_backoff_s: 0.25, max_backoff_s: 8, jitter: true,
              on: [rate_limit, timeout, connection, server_error, overloaded]}
      breaker: {fail_max: 5, reset_timeout_s: 30, success_threshold: 1,
                trip_on: [timeout, connection, server_error, overloaded, rate_limit, auth]}
    providers:                       # named instances of factory types
      sonnet: {type: anthropic, model: claude-sonnet-4-5, api_key: "${ANTHROPIC_API_KEY}"}
      mini:   {type: openai, model: gpt-4o-mini, api_key: "${OPENAI_API_KEY}", max_concurrency: 64}
      llama:  {type: ollama, base_url: "${OLLAMA_BASE_URL:-http://localhost:11434}",
               model: llama3.2, timeout_s: 60}
    prices:                          # USD per 1M tokens; overrides the bundled price map
      llama3.2: {input: 0, output: 0}
    tasks:
      summarize:
        chain: [sonnet, mini, llama]
        deadline_s: 45               # the whole request, all candidates and waits included
        first_token_timeout_s: 5     # streaming: give up on a candidate that sends nothing
      extract:
        strategy: cheapest           # ordered (default) | cheapest | fastest | weighted
        chain: [{provider: mini, params: {temperature: 0}}, sonnet]
      default:
        chain: [mini, sonnet, llama]
    state: {backend: memory}
    """
)
KEYS = {"ANTHROPIC_API_KEY": "sk-ant-secret-0001", "OPENAI_API_KEY": "sk-oai-secret-0002"}

# A small valid policy that the error cases below break one line at a time.
BASE = textwrap.dedent(
    """\
    version: 1
    providers:
      mini:
        type: openai
        model: gpt-4o-mini
      sonnet:
        type: anthropic
    tasks:
      default:
        chain: [mini, sonnet]
    """
)


def doc(**top: Any) -> str:
    """BASE as a dict with top-level keys replaced, dumped back to YAML."""
    tree = yaml.safe_load(BASE)
    tree.update(top)
    return yaml.safe_dump(tree, sort_keys=False)


def error_of(text: str | bytes, **kwargs: Any) -> PolicyError:
    kwargs.setdefault("provider_types", LLMFactory.registered_providers())
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, environ=kwargs.pop("environ", {}), **kwargs)
    return caught.value


# --- the example loads with the right resolved values ----------------------------------------


def test_example_resolves_providers_with_defaults_and_overrides() -> None:
    policy = parse_policy(EXAMPLE, environ=KEYS)

    assert list(policy.providers) == ["sonnet", "mini", "llama"]
    sonnet, mini, llama = policy.providers.values()
    assert (sonnet.name, sonnet.type, sonnet.model) == ("sonnet", "anthropic", "claude-sonnet-4-5")
    assert sonnet.api_key is not None
    assert sonnet.api_key.get_secret_value() == KEYS["ANTHROPIC_API_KEY"]
    assert sonnet.timeout_s == 30 and llama.timeout_s == 60
    assert mini.max_concurrency == 64 and sonnet.max_concurrency is None
    assert llama.base_url == "http://localhost:11434" and llama.api_key is None
    assert all(spec.unavailable_reason is None for spec in policy.providers.values())
    assert mini.retry == RetryPolicy() and mini.breaker == BreakerPolicy()
    assert mini.retry.on == {
        ErrorKind.RATE_LIMIT,
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECTION,
        ErrorKind.SERVER_ERROR,
        ErrorKind.OVERLOADED,
    }
    assert ErrorKind.AUTH in mini.breaker.trip_on


def test_example_resolves_tasks_prices_and_state() -> None:
    policy = parse_policy(EXAMPLE, environ=KEYS)

    summarize = policy.tasks["summarize"]
    assert [entry.provider for entry in summarize.chain] == ["sonnet", "mini", "llama"]
    assert summarize.strategy == "ordered"
    assert (summarize.deadline_s, summarize.first_token_timeout_s) == (45, 5)
    assert summarize.on_midstream_failure == "raise"
    extract = policy.tasks["extract"]
    assert extract.strategy == "cheapest"
    assert extract.chain == (
        ChainEntry(provider="mini", params={"temperature": 0}),
        ChainEntry(provider="sonnet"),
    )
    assert extract.deadline_s is None
    assert (policy.prices["llama3.2"].input, policy.prices["llama3.2"].output) == (0, 0)
    assert policy.state.backend == "memory"
    assert policy.version == 1
    assert policy.sha256 == hashlib.sha256(EXAMPLE.encode()).hexdigest()
    assert policy.source == "<string>"


def test_provider_override_changes_only_the_keys_it_names() -> None:
    text = doc(
        defaults={
            "timeout_s": 12,
            "retry": {"attempts": 4, "initial_backoff_s": 0.5, "max_backoff_s": 3},
            "breaker": {"fail_max": 7, "reset_timeout_s": 9},
        },
        providers={
            "mini": {
                "type": "openai",
                "retry": {"attempts": 1},
                "breaker": {"trip_on": ["auth"]},
            },
            "sonnet": {"type": "anthropic"},
        },
    )
    policy = parse_policy(text, environ={})

    mini, sonnet = policy.providers["mini"], policy.providers["sonnet"]
    assert mini.retry.attempts == 1
    assert (mini.retry.initial_backoff_s, mini.retry.max_backoff_s) == (0.5, 3)
    assert mini.breaker.trip_on == {ErrorKind.AUTH}
    assert (mini.breaker.fail_max, mini.breaker.reset_timeout_s) == (7, 9)
    assert sonnet.retry.attempts == 4 and sonnet.breaker.fail_max == 7
    assert mini.timeout_s == sonnet.timeout_s == 12


def test_factory_options_carry_plain_key_and_leave_unset_values_out() -> None:
    text = doc(
        providers={
            "mini": {
                "type": "azure_openai",
                "model": "gpt-4o-mini",
                "api_key": "sk-plain",
                "max_concurrency": 8,
                "options": {"api_version": "2024-10-21", "deployment": "prod-mini"},
            },
            "sonnet": {"type": "anthropic"},
        }
    )
    policy = parse_policy(text, environ={})

    assert policy.providers["mini"].factory_options() == {
        "name": "mini",
        "model": "gpt-4o-mini",
        "api_key": "sk-plain",
        "timeout_s": 30.0,
        "max_connections": 8,
        "api_version": "2024-10-21",
        "deployment": "prod-mini",
    }
    assert policy.providers["sonnet"].factory_options() == {
        "name": "sonnet",
        "timeout_s": 30.0,
    }


def test_yaml_1_1_surprises_are_avoided() -> None:
    # Unquoted `on:` stays a key, a date stays text, `no` stays text.
    text = BASE.replace(
        "    model: gpt-4o-mini\n",
        "    model: gpt-4o-mini\n"
        "    retry:\n      on: [timeout]\n"
        "    options: {api_version: 2024-10-21, region: no}\n",
    )
    mini = parse_policy(text, environ={}).providers["mini"]

    assert mini.retry.on == {ErrorKind.TIMEOUT}
    assert mini.options == {"api_version": "2024-10-21", "region": "no"}


def test_anchors_and_merge_keys_share_settings() -> None:
    text = textwrap.dedent(
        """\
        version: 1
        providers:
          a: &hosted {type: openai, model: gpt-4o-mini, timeout_s: 7}
          b: {<<: *hosted, model: gpt-4o}
        tasks:
          default: {chain: [a, b]}
        """
    )
    policy = parse_policy(text, environ={})

    assert policy.providers["b"].model == "gpt-4o"
    assert policy.providers["b"].timeout_s == 7
    assert policy.providers["b"].type == "openai"


# --- ${VAR} substitution ---------------------------------------------------------------------


def test_set_variables_are_substituted() -> None:
    policy = parse_policy(EXAMPLE, environ={**KEYS, "OLLAMA_BASE_URL": "http://gpu:11434"})

    assert policy.providers["llama"].base_url == "http://gpu:11434"
    key = policy.providers["mini"].api_key
    assert key is not None and key.get_secret_value() == KEYS["OPENAI_API_KEY"]


@pytest.mark.parametrize("environ", [{}, {"ANTHROPIC_API_KEY": ""}], ids=["unset", "empty"])
def test_unset_key_leaves_the_provider_loaded_but_unavailable(environ: dict[str, str]) -> None:
    policy = parse_policy(EXAMPLE, environ={"OPENAI_API_KEY": "sk-x", **environ})

    sonnet = policy.providers["sonnet"]
    assert sonnet.unavailable_reason == "ANTHROPIC_API_KEY is not set"
    assert sonnet.api_key is None
    assert not sonnet.available
    assert policy.providers["mini"].unavailable_reason is None
    assert policy.tasks["summarize"].chain[0].provider == "sonnet"


def test_unavailable_reason_names_every_missing_variable() -> None:
    text = doc(
        providers={
            "mini": {"type": "openai", "api_key": "${KEY_A}", "base_url": "https://${HOST}/v1"},
            "sonnet": {"type": "anthropic"},
        }
    )
    mini = parse_policy(text, environ={}).providers["mini"]

    assert mini.unavailable_reason == "KEY_A, HOST are not set"
    assert mini.base_url is None


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "http://localhost:11434"),
        ({"OLLAMA_BASE_URL": ""}, "http://localhost:11434"),
        ({"OLLAMA_BASE_URL": "http://box:1"}, "http://box:1"),
    ],
)
def test_default_form(environ: dict[str, str], expected: str) -> None:
    policy = parse_policy(EXAMPLE, environ=environ)

    assert policy.providers["llama"].base_url == expected
    assert policy.providers["llama"].unavailable_reason is None


def test_substituted_text_is_converted_to_the_field_type() -> None:
    text = doc(
        providers={
            "mini": {"type": "openai", "timeout_s": "${T:-12.5}", "max_concurrency": "${C}"},
            "sonnet": {"type": "anthropic"},
        }
    )
    mini = parse_policy(text, environ={"C": "16"}).providers["mini"]

    assert (mini.timeout_s, mini.max_concurrency) == (12.5, 16)


def test_doubled_dollar_keeps_a_literal_reference() -> None:
    text = doc(
        providers={
            "mini": {"type": "openai", "options": {"template": "$${NOT_A_VAR}"}},
            "sonnet": {"type": "anthropic"},
        }
    )
    mini = parse_policy(text, environ={}).providers["mini"]

    assert mini.options == {"template": "${NOT_A_VAR}"}
    assert mini.unavailable_reason is None


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-from-env")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    policy = parse_policy(EXAMPLE)

    assert policy.providers["sonnet"].unavailable_reason is None
    assert policy.providers["mini"].unavailable_reason == "OPENAI_API_KEY is not set"


def test_unset_variable_outside_a_provider_is_an_error() -> None:
    text = BASE + 'state: {backend: redis, url: "${REDIS_URL}"}\n'

    error = error_of(text)

    assert error.path == "state.url"
    assert error.line == 11
    assert "REDIS_URL is not set" in error.reason
    assert "${REDIS_URL:-default}" in error.reason


def test_state_url_default_form_loads() -> None:
    text = BASE + 'state: {backend: redis, url: "${REDIS_URL:-redis://127.0.0.1:6379/2}"}\n'

    state = parse_policy(text, environ={}).state

    assert (state.backend, state.url, state.namespace) == (
        "redis",
        "redis://127.0.0.1:6379/2",
        "gateway",
    )


# --- bad input: path, line, and a message that says what to write ----------------------------


def replace(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new)


BAD_INPUTS = [
    pytest.param(
        "version: 1\nproviders: {mini: [\n", "", 3, ["malformed YAML"], id="malformed-yaml"
    ),
    pytest.param("- just\n- a list\n", "", 1, ["a mapping", "a list"], id="not-a-mapping"),
    pytest.param("", "", None, ["empty"], id="empty-document"),
    pytest.param(
        replace("model: gpt-4o-mini", "model: gpt-4o-mini\n    timeout: 3"),
        "providers.mini.timeout",
        6,
        ["unknown key 'timeout'", "did you mean 'timeout_s'?"],
        id="unknown-key",
    ),
    pytest.param(
        BASE + "  other:\n    chain: [mini]\n    deadline: 3\n",
        "tasks.other.deadline",
        13,
        ["did you mean 'deadline_s'?"],
        id="unknown-task-key",
    ),
    pytest.param(
        replace("[mini, sonnet]", "[mini, sonet]"),
        "tasks.default.chain[1]",
        10,
        ["'sonet' is not defined", "did you mean 'sonnet'?", "mini, sonnet"],
        id="undefined-provider",
    ),
    pytest.param(
        replace("[mini, sonnet]", "[]"),
        "tasks.default.chain",
        10,
        ["chain is empty", "at least one provider"],
        id="empty-chain",
    ),
    pytest.param(
        replace("model: gpt-4o-mini", "timeout_s: -1"),
        "providers.mini.timeout_s",
        5,
        ["greater than 0", "-1"],
        id="negative-timeout",
    ),
    pytest.param(
        replace("chain: [mini, sonnet]", "chain: [mini, sonnet]\n    deadline_s: 0"),
        "tasks.default.deadline_s",
        11,
        ["greater than 0", "got 0"],
        id="zero-deadline",
    ),
    pytest.param(
        BASE + "defaults:\n  retry:\n    attempts: 0\n",
        "defaults.retry.attempts",
        13,
        ["at least 1", "got 0"],
        id="zero-attempts",
    ),
    pytest.param(
        BASE + "defaults:\n  retry:\n    on: [rate_limit, timout]\n",
        "defaults.retry.on[1]",
        13,
        ["'timout'", "did you mean 'timeout'?", "server_error", "context_length"],
        id="unknown-error-kind",
    ),
    pytest.param(
        BASE + "defaults:\n  breaker: {trip_on: [overload]}\n",
        "defaults.breaker.trip_on[0]",
        12,
        ["did you mean 'overloaded'?"],
        id="unknown-trip-kind",
    ),
    pytest.param(
        BASE + "    strategy: cheapst\n",
        "tasks.default.strategy",
        11,
        ["'cheapst'", "did you mean 'cheapest'?", "ordered, cheapest, fastest, weighted"],
        id="unknown-strategy",
    ),
    pytest.param(
        replace("    model: gpt-4o-mini\n", "    model: gpt-4o-mini\n    model: gpt-4o\n"),
        "providers.mini.model",
        6,
        ["duplicate key 'model'", "first at line 5"],
        id="duplicate-key",
    ),
    pytest.param(
        BASE + "  default:\n    chain: [mini]\n",
        "tasks.default",
        11,
        ["duplicate key 'default'", "first at line 9"],
        id="duplicate-task",
    ),
    pytest.param(
        replace("[mini, sonnet]", "[mini, {task: b}]")
        + "  b:\n    chain: [sonnet, {task: default}]\n",
        "tasks.b.chain[1]",
        12,
        ["cycle", "default -> b -> default"],
        id="task-cycle",
    ),
    pytest.param(
        replace("[mini, sonnet]", "[{task: default}]"),
        "tasks.default.chain[0]",
        10,
        ["cycle", "default -> default"],
        id="task-refers-to-itself",
    ),
    pytest.param(
        replace("[mini, sonnet]", "[mini, sonnet, mini]"),
        "tasks.default.chain[2]",
        10,
        ["'mini' appears twice", "position 0", "position 2"],
        id="duplicate-in-chain",
    ),
    pytest.param(
        replace("[mini, sonnet]", "[mini, {task: b}]") + "  b:\n    chain: [sonnet, mini]\n",
        "tasks.default.chain[1]",
        10,
        ["'mini' appears twice", "tasks.default.chain[0]", "tasks.b.chain[1]"],
        id="duplicate-via-spliced-task",
    ),
    pytest.param(
        replace("[mini, sonnet]", "[mini, {task: defualt}]"),
        "tasks.default.chain[1].task",
        10,
        ["'defualt' is not defined", "did you mean 'default'?"],
        id="undefined-task-reference",
    ),
    pytest.param(
        replace("type: openai", "type: opanai"),
        "providers.mini.type",
        4,
        ["unknown provider type 'opanai'", "did you mean 'openai'?", "anthropic", "ollama"],
        id="unknown-type",
    ),
    pytest.param(
        replace("    type: anthropic\n", "    model: claude-sonnet-4-5\n"),
        "providers.sonnet.type",
        6,
        ["`type` is required", "openai"],
        id="missing-type",
    ),
    pytest.param(
        replace("version: 1", "version: 2"),
        "version",
        1,
        ["version 2 is not supported", "version: 1"],
        id="version-2",
    ),
    pytest.param(
        replace("version: 1\n", ""),
        "version",
        1,
        ["`version` is required", "version: 1"],
        id="version-missing",
    ),
    pytest.param(
        replace("[mini, sonnet]", "[mini, 5]"),
        "tasks.default.chain[1]",
        10,
        ["provider name", "{task: OTHER}", "got 5"],
        id="chain-entry-number",
    ),
    pytest.param(
        replace("[mini, sonnet]", "[mini, {provider: sonnet, parms: {t: 1}}]"),
        "tasks.default.chain[1].parms",
        10,
        ["did you mean 'params'?"],
        id="chain-entry-unknown-key",
    ),
    pytest.param(
        replace("[mini, sonnet]", "[{provider: mini, task: x}]"),
        "tasks.default.chain[0]",
        10,
        ["not both"],
        id="chain-entry-provider-and-task",
    ),
    pytest.param(
        BASE + "defaults:\n  retry: {initial_backoff_s: 10, max_backoff_s: 2}\n",
        "defaults.retry",
        12,
        ["max_backoff_s (2) is below initial_backoff_s (10)"],
        id="backoff-order",
    ),
    pytest.param(
        replace("model: gpt-4o-mini", "retry: {initial_backoff_s: 20}"),
        "providers.mini.retry",
        5,
        ["max_backoff_s (8) is below initial_backoff_s (20)"],
        id="backoff-order-after-merge",
    ),
    pytest.param(
        replace("model: gpt-4o-mini", "options: {model: other}"),
        "providers.mini.options.model",
        5,
        ["move it out of options"],
        id="option-clashes-with-setting",
    ),
    pytest.param(
        BASE + "state: {backend: redis, url: 'http://cache:6379'}\n",
        "state.url",
        11,
        ["not a Redis URL", "redis://"],
        id="state-url-not-redis",
    ),
    pytest.param(
        BASE + "state: {backend: postgres}\n",
        "state.backend",
        11,
        ["'postgres'", "memory, redis"],
        id="unknown-state-backend",
    ),
    pytest.param(
        replace("model: gpt-4o-mini", "timeout_s: soon"),
        "providers.mini.timeout_s",
        5,
        ["'soon'", "write a number"],
        id="timeout-not-a-number",
    ),
    pytest.param(
        replace("model: gpt-4o-mini", "model: '${OPENAI_MODEL'"),
        "providers.mini.model",
        5,
        ["malformed environment reference", "${NAME:-default}"],
        id="malformed-env-reference",
    ),
    pytest.param(
        BASE + "prices:\n  1: {input: 1, output: 2}\n",
        "prices",
        12,
        ["key '1' is not text", "quote it"],
        id="non-text-key",
    ),
    pytest.param(
        BASE + "prices: !!set {a}\n",
        "prices",
        11,
        ["unsupported YAML tag"],
        id="yaml-set",
    ),
    pytest.param(
        "version: 1\nproviders: [mini]\ntasks: {default: {chain: [mini]}}\n",
        "providers",
        2,
        ["providers must be a mapping", "a list"],
        id="providers-not-a-mapping",
    ),
    pytest.param(
        "version: 1\nproviders: {}\ntasks: {}\n",
        "tasks",
        3,
        ["no tasks are defined"],
        id="no-tasks",
    ),
    pytest.param(
        "version: 1\nproviders: &p {x: *p}\ntasks: {}\n",
        "providers.x",
        2,
        ["refers to itself"],
        id="recursive-alias",
    ),
    pytest.param(
        replace("model: gpt-4o-mini", "weight: 0")
        .replace("type: anthropic", "type: anthropic\n    weight: 0")
        .replace("[mini, sonnet]", "[mini, sonnet]\n    strategy: weighted"),
        "tasks.default.strategy",
        12,
        ["weight > 0"],
        id="weighted-without-weight",
    ),
]


@pytest.mark.parametrize(("text", "path", "line", "fragments"), BAD_INPUTS)
def test_bad_input_is_a_policy_error_naming_path_line_and_fix(
    text: str, path: str, line: int | None, fragments: list[str]
) -> None:
    error = error_of(text, source="routing.yaml")

    assert (error.path, error.line) == (path, line)
    assert error.source == "routing.yaml"
    for fragment in fragments:
        assert fragment in error.reason
    assert str(error).startswith("routing.yaml")
    if path:
        assert f"at {path}:" in str(error)


def test_several_problems_are_all_listed_the_topmost_first() -> None:
    text = replace("model: gpt-4o-mini", "timeout_s: -1\n    weight: -2")

    error = error_of(text)

    assert (error.path, error.line) == ("providers.mini.timeout_s", 5)
    assert error.reason.startswith("timeout_s must be greater than 0 seconds, got -1")
    assert "1 more problem: line 6, at providers.mini.weight: weight must be at least 0" in (
        error.reason
    )
    assert "\n" not in str(error)  # still one line, for logs and `gateway check`


def test_a_misspelt_key_is_the_lead_problem_with_a_suggestion() -> None:
    # `chian:` leaves `chain` missing too: the misspelling is the cause, so it leads and both
    # are shown, the missing key pointing at it.
    text = replace("    chain: [mini, sonnet]", "    chian: [mini, sonnet]")

    error = error_of(text)

    assert (error.path, error.line) == ("tasks.default.chian", 10)
    assert error.reason.startswith("unknown key 'chian' (did you mean 'chain'?)")
    assert "1 more problem: line 9, at tasks.default: `chain` is required here" in error.reason
    assert "'chian' at line 10" in error.reason


def test_every_problem_is_listed_however_many() -> None:
    text = textwrap.dedent(
        """\
        version: 1
        providers:
          mini: {type: openai, timout_s: 5, weight: -1}
          sonnet: {type: anthropic, modle: claude}
        tasks:
          default: {chian: [mini]}
          other: {chain: [mini], stratgy: cheapest}
        """
    )

    error = error_of(text)

    for fragment in [
        "unknown key 'timout_s' (did you mean 'timeout_s'?)",
        "at providers.mini.weight: weight must be at least 0",
        "unknown key 'modle' (did you mean 'model'?)",
        "unknown key 'chian' (did you mean 'chain'?)",
        "`chain` is required here",
        "unknown key 'stratgy' (did you mean 'strategy'?)",
        "5 more problems",
    ]:
        assert fragment in str(error)
    assert (error.path, error.line) == ("providers.mini.timout_s", 3)


def test_every_undefined_name_in_the_chains_is_listed() -> None:
    text = BASE + "  other:\n    chain: [sonet, {task: defualt}, mni]\n"

    error = error_of(text.replace("chain: [mini, sonnet]", "chain: [mini, sonet]"))

    assert (error.path, error.line) == ("tasks.default.chain[1]", 10)
    assert error.reason.startswith("provider 'sonet' is not defined (did you mean 'sonnet'?)")
    for fragment in [
        "3 more problems",
        "line 12, at tasks.other.chain[0]: provider 'sonet' is not defined",
        "at tasks.other.chain[1].task: task 'defualt' is not defined (did you mean 'default'?)",
        "at tasks.other.chain[2]: provider 'mni' is not defined (did you mean 'mini'?)",
    ]:
        assert fragment in error.reason


def test_a_large_plain_policy_is_refused_naming_the_limit_and_the_file_size() -> None:
    providers = "\n".join(
        f"  p{i}: {{type: openai, model: m{i}, api_key: k, timeout_s: 5}}" for i in range(10_000)
    )
    text = f"version: 1\nproviders:\n{providers}\ntasks:\n  default: {{chain: [p0]}}\n"

    error = error_of(text)

    assert "expands to" not in error.reason and "aliases?" not in error.reason
    assert "more than 100000 values" in error.reason
    assert "10005 lines" in error.reason and f"{len(text)} bytes" in error.reason
    assert "no YAML aliases" in error.reason


def test_an_alias_bomb_is_refused_naming_the_aliases() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    text = "\n".join(lines)

    error = error_of(text)

    assert "expands to more than 100000 values" in error.reason
    assert "through YAML aliases" in error.reason
    assert f"{len(text)} bytes" in error.reason


def test_bytes_that_are_not_utf8_are_a_policy_error() -> None:
    error = error_of(b"version: 1\n\xff\xfe\n")

    assert "not UTF-8" in error.reason


def test_a_wrongly_typed_api_key_is_never_shown() -> None:
    secret = "sk-live-abcdef123456"
    text = replace("model: gpt-4o-mini", f"api_key: [{secret}]")

    error = error_of(text)

    assert error.path == "providers.mini.api_key"
    assert secret not in str(error)
    assert "secret" in error.reason


def test_an_unknown_key_shows_no_value() -> None:
    # A misspelt api_key is still a key: its value must not reach the message.
    text = replace("model: gpt-4o-mini", "apikey: sk-live-zzzz9999")

    error = error_of(text)

    assert "did you mean 'api_key'?" in error.reason
    assert "sk-live-zzzz9999" not in str(error)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("version: 1", "version: 1\ndefaults: ${OPENAI_API_KEY}"),  # a value of the wrong type
        ("type: openai", "type: ${OPENAI_API_KEY}"),  # an unknown provider type
        ("chain: [mini, sonnet]", "chain: [mini, '${OPENAI_API_KEY}']"),  # an undefined provider
    ],
    ids=["wrong-type", "unknown-type", "undefined-provider"],
)
def test_a_key_from_the_environment_in_the_wrong_place_is_shown_as_its_reference(
    old: str, new: str
) -> None:
    # The loader cannot know a misplaced value is a key; it knows it came from the environment.
    text = replace(old, new)

    error = error_of(text, environ=KEYS)

    assert KEYS["OPENAI_API_KEY"] not in str(error)
    assert "${OPENAI_API_KEY}" in error.reason


def test_alias_bombs_are_refused() -> None:
    lines = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 7):
        previous = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([previous] * 10)}]")

    error = error_of("\n".join(lines) + "\n")

    assert "more than" in error.reason


# --- task lookup ----------------------------------------------------------------------------


def test_unknown_task_falls_back_to_default() -> None:
    policy = parse_policy(EXAMPLE, environ={})

    assert policy.task("summarize").name == "summarize"
    assert policy.task("translate").name == "default"


def test_unknown_task_without_default_lists_the_tasks() -> None:
    text = replace("  default:\n", "  summarize:\n") + "  extract:\n    chain: [mini]\n"
    policy = parse_policy(text, environ={})

    with pytest.raises(UnknownTaskError) as caught:
        policy.task("translate")

    assert "'translate'" in str(caught.value)
    assert "extract, summarize" in str(caught.value)


def test_spliced_task_chain_is_resolved_in_place() -> None:
    text = BASE.replace("[mini, sonnet]", "[{task: hosted}]") + (
        "  hosted:\n    chain: [sonnet, {provider: mini, params: {max_tokens: 50}}]\n"
    )
    policy = parse_policy(text, environ={})

    assert policy.tasks["default"].chain == (
        ChainEntry(provider="sonnet"),
        ChainEntry(provider="mini", params={"max_tokens": 50}),
    )


# --- masked() and secrets ----------------------------------------------------------------------


def test_masked_hides_keys_and_url_passwords() -> None:
    text = EXAMPLE.replace(
        "state: {backend: memory}",
        "state: {backend: redis, url: 'redis://user:hunter2@cache:6379/0'}",
    )
    policy = parse_policy(text, environ={"OPENAI_API_KEY": KEYS["OPENAI_API_KEY"]})

    shown = policy.masked()
    dumped = json.dumps(shown)

    assert KEYS["OPENAI_API_KEY"] not in dumped and "hunter2" not in dumped
    assert shown["providers"]["mini"]["api_key"] == "***"
    assert shown["providers"]["sonnet"]["api_key"] is None
    assert shown["providers"]["sonnet"]["unavailable_reason"] == "ANTHROPIC_API_KEY is not set"
    assert shown["state"]["url"] == "redis://***:***@cache:6379/0"
    assert shown["defaults"]["retry"]["on"] == sorted(shown["defaults"]["retry"]["on"])
    assert shown["tasks"]["extract"]["chain"][0] == {
        "provider": "mini",
        "params": {"temperature": 0},
    }
    assert (shown["sha256"], shown["source"]) == (policy.sha256, "<string>")
    assert isinstance(shown["loaded_at"], float)


def test_reprs_never_show_a_key() -> None:
    policy = parse_policy(EXAMPLE, environ=KEYS)

    for secret in KEYS.values():
        assert secret not in repr(policy)
        assert secret not in str(policy.providers)


def test_values_from_the_environment_are_shown_as_their_references() -> None:
    # An option can carry a credential under any name (a header, a token field): what came
    # from the environment is shown as the reference, in the admin view and in reprs, unless
    # the name says it is secret (then it is *** whatever it holds).
    token = "tok-live-5551234"
    text = replace(
        "model: gpt-4o-mini",
        "model: gpt-4o-mini\n"
        "    options: {default_headers: {Authorization: 'Bearer ${GATEWAY_TOKEN}',"
        " X-Tenant: 'tenant ${GATEWAY_TOKEN}'}}",
    )
    policy = parse_policy(text, environ={"GATEWAY_TOKEN": token})

    shown = policy.masked()
    headers = shown["providers"]["mini"]["options"]["default_headers"]
    assert headers == {"Authorization": "***", "X-Tenant": "tenant ${GATEWAY_TOKEN}"}
    for text_form in (json.dumps(shown), repr(policy), str(policy.providers)):
        assert token not in text_form
    # The provider itself still gets the real value.
    options = policy.providers["mini"].factory_options()["default_headers"]
    assert options == {"Authorization": f"Bearer {token}", "X-Tenant": f"tenant {token}"}


# --- fingerprints ----------------------------------------------------------------------------


def fingerprints(text: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    policy = parse_policy(text, environ=KEYS if environ is None else environ)
    return {name: spec.fingerprint() for name, spec in policy.providers.items()}


MINI_LINE = (
    '  mini:   {type: openai, model: gpt-4o-mini, api_key: "${OPENAI_API_KEY}", '
    "max_concurrency: 64}"
)


@pytest.mark.parametrize(
    "changed_line",
    [
        MINI_LINE.replace("gpt-4o-mini", "gpt-4o"),
        MINI_LINE.replace("max_concurrency: 64", "max_concurrency: 64, base_url: http://x/v1"),
        MINI_LINE.replace("max_concurrency: 64", "max_concurrency: 64, retry: {attempts: 1}"),
        MINI_LINE.replace("max_concurrency: 64", "max_concurrency: 64, breaker: {fail_max: 2}"),
        MINI_LINE.replace("max_concurrency: 64", "max_concurrency: 64, timeout_s: 5"),
        MINI_LINE.replace("max_concurrency: 64", "max_concurrency: 8"),
    ],
    ids=["model", "base_url", "retry", "breaker", "timeout", "concurrency"],
)
def test_fingerprint_changes_with_client_or_breaker_settings(changed_line: str) -> None:
    before = fingerprints(EXAMPLE)
    assert MINI_LINE in EXAMPLE

    after = fingerprints(EXAMPLE.replace(MINI_LINE, changed_line))

    assert after["mini"] != before["mini"]
    assert after["sonnet"] == before["sonnet"] and after["llama"] == before["llama"]


def test_fingerprint_changes_with_the_key() -> None:
    before = fingerprints(EXAMPLE)
    after = fingerprints(EXAMPLE, {**KEYS, "OPENAI_API_KEY": "sk-rotated"})

    assert after["mini"] != before["mini"]
    assert KEYS["OPENAI_API_KEY"] not in before["mini"]


def test_fingerprint_ignores_routing_only_changes() -> None:
    before = fingerprints(EXAMPLE)
    routing_only = (
        EXAMPLE.replace(
            MINI_LINE,
            MINI_LINE.replace(
                "max_concurrency: 64", "max_concurrency: 64, weight: 3, max_input_tokens: 9000"
            ),
        )
        .replace("deadline_s: 45", "deadline_s: 90")
        .replace("llama3.2: {input: 0, output: 0}", "llama3.2: {input: 1, output: 1}")
        .replace("chain: [mini, sonnet, llama]", "chain: [llama, mini]")
    )

    assert fingerprints(routing_only) == before
    # ...and a defaults change reaches every provider that does not override it.
    changed_default = EXAMPLE.replace("fail_max: 5", "fail_max: 6")
    assert all(after != before[name] for name, after in fingerprints(changed_default).items())


# --- shipped files and the schema ----------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policies_load_with_no_environment(path: Path) -> None:
    policy = load_policy(path, environ={})

    assert policy.source == str(path)
    assert policy.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert policy.task("anything-at-all").chain
    assert any(spec.available for spec in policy.providers.values())
    assert path.read_text().startswith("# yaml-language-server: $schema=")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policies_validate_against_the_schema(path: Path) -> None:
    # Editors read YAML 1.2 (unquoted `on:` is a key), as the policy loader does.
    jsonschema.validate(read_policy_yaml(path.read_text()), policy_json_schema())


def test_schema_file_is_in_step_with_the_models() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == policy_json_schema(), (
        "regenerate it: python -m gateway.policy --schema > policies/routing.schema.json"
    )


def test_schema_accepts_what_ops_write_and_rejects_typos() -> None:
    schema = policy_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    written = read_policy_yaml(EXAMPLE)
    written["tasks"]["summarize"]["chain"].append({"task": "extract"})
    written["providers"]["mini"]["timeout_s"] = "${MINI_TIMEOUT:-20}"

    assert list(validator.iter_errors(written)) == []

    written["providers"]["mini"]["timeout"] = 3
    written["tasks"]["extract"]["chain"].append({"provider": "llama", "parms": {}})
    assert len(list(validator.iter_errors(written))) == 2


def test_load_policy_of_a_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(PolicyError) as caught:
        load_policy(missing)

    assert caught.value.source == str(missing)
    assert "cannot read" in caught.value.reason


def test_cli_prints_the_schema_and_checks_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--schema"]) == 0
    assert json.loads(capsys.readouterr().out) == policy_json_schema()

    bad = tmp_path / "bad.yaml"
    bad.write_text(replace("[mini, sonnet]", "[mini, sonet]"))
    assert main([str(SHIPPED[0]), str(bad)]) == 1
    captured = capsys.readouterr()
    assert "routing.yaml: ok" in captured.out
    assert "tasks.default.chain[1]" in captured.err


def test_loading_a_policy_imports_no_provider_sdk() -> None:
    code = (
        "import sys, gateway.policy as p\n"
        f"p.parse_policy({EXAMPLE!r}, environ={{}})\n"
        "print(sorted({'openai', 'anthropic', 'litellm'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )

    assert result.stdout.strip() == "[]"


# --- property: any YAML-able tree gives a Policy or a PolicyError ---------------------------------

POLICY_WORDS = [
    "version", "defaults", "providers", "prices", "tasks", "state", "timeout_s", "retry",
    "breaker", "attempts", "on", "trip_on", "type", "model", "api_key", "chain", "provider",
    "params", "task", "strategy", "deadline_s", "default", "openai", "ollama", "mini",
    "backend", "weight", "options", "input", "output", "${X}", "${Y:-1}",
]  # fmt: skip
words = st.sampled_from(POLICY_WORDS)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    words,
    st.text(max_size=6),
)
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(words, st.text(max_size=4)), children, max_size=4),
    ),
    max_leaves=25,
)
policy_shaped = st.fixed_dictionaries(
    {"version": st.sampled_from([1, 1, 2, "1"])},
    optional={
        "providers": st.dictionaries(
            words, st.fixed_dictionaries({"type": words}, optional={"model": trees}), max_size=3
        ),
        "tasks": st.dictionaries(
            words,
            st.fixed_dictionaries(
                {"chain": st.lists(st.one_of(words, trees), max_size=3)},
                optional={"strategy": words, "deadline_s": scalars},
            ),
            max_size=3,
        ),
        "defaults": trees,
        "state": trees,
    },
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(trees, policy_shaped), st.dictionaries(st.sampled_from(["X", "Y"]), words))
def test_any_tree_gives_a_policy_or_a_policy_error(tree: Any, environ: dict[str, str]) -> None:
    text = yaml.safe_dump(tree)
    try:
        policy = parse_policy(text, environ=environ)
    except PolicyError as error:
        assert error.reason
    else:
        assert isinstance(policy, Policy) and policy.tasks


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=60) | st.text(max_size=60))
def test_any_bytes_give_a_policy_or_a_policy_error(raw: bytes | str) -> None:
    try:
        parse_policy(raw, environ={})
    except PolicyError as error:
        assert error.reason


def test_state_url_password_never_in_repr() -> None:
    from gateway.policy import StateSpec

    spec = StateSpec(backend="redis", url="redis://:hunter2-canary@127.0.0.1:6379/0")
    assert "hunter2-canary" not in repr(spec)
    assert "hunter2-canary" not in str(spec)


@pytest.mark.parametrize(
    "url",
    ["ftp://TOKEN-zz9@host/v1", "http://", "example.com/v1", "[::1"],
    ids=["other-scheme", "no-host", "no-scheme", "unparsable"],
)
def test_a_base_url_that_is_not_http_is_refused_at_load_with_its_credentials_masked(
    url: str,
) -> None:
    text = replace("model: gpt-4o-mini", f"model: gpt-4o-mini\n    base_url: '{url}'")

    error = error_of(text)

    assert error.path == "providers.mini.base_url"
    assert "is not an http(s) URL" in error.reason
    assert "https://HOST" in error.reason
    assert "TOKEN-zz9" not in str(error)


def test_a_provider_can_turn_the_failure_rate_rule_off_or_tune_part_of_it() -> None:
    policy = parse_policy(
        textwrap.dedent(
            """
            version: 1
            defaults:
              breaker: {failure_rate: {window_s: 60, min_calls: 20}}
            providers:
              off: {type: openai, model: m, api_key: x, breaker: {failure_rate: null}}
              tuned: {type: openai, model: m, api_key: x, breaker: {failure_rate: {threshold: 0.8}}}
              inherits: {type: openai, model: m, api_key: x, breaker: {fail_max: 9}}
            tasks: {default: {chain: [off, tuned, inherits]}}
            """
        )
    )
    breakers = {name: spec.breaker for name, spec in policy.providers.items()}
    assert breakers["off"].failure_rate is None
    tuned = breakers["tuned"].failure_rate
    assert tuned is not None
    assert (tuned.window_s, tuned.min_calls, tuned.threshold) == (60, 20, 0.8)
    inherited = breakers["inherits"].failure_rate
    assert inherited is not None and (inherited.window_s, inherited.min_calls) == (60, 20)
    assert breakers["inherits"].fail_max == 9


def test_the_policy_checker_reads_keys_from_dot_env_as_the_gateway_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POLICY_CLI_TEST_KEY", raising=False)
    (tmp_path / ".env").write_text("POLICY_CLI_TEST_KEY=sk-from-dot-env\n")
    policy = tmp_path / "routing.yaml"
    policy.write_text(
        "version: 1\n"
        "providers:\n"
        '  mini: {type: openai, model: gpt-4o-mini, api_key: "${POLICY_CLI_TEST_KEY}"}\n'
        "tasks: {default: {chain: [mini]}}\n"
    )
    assert main([str(policy)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"{policy}: ok, 1 provider, 1 task"  # not "unavailable: mini"
