"""Fuzzing the policy loader: whatever the file holds, the answer is a Policy or a PolicyError.

Any other exception (a KeyError deep in resolution, a RecursionError, a TypeError from an
unexpected YAML type) would reach `gateway check` and the live reload as a crash instead of
a message naming the key and line.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from gateway.errors import ErrorKind, PolicyError
from gateway.policy import Policy, parse_policy

SOURCE = "fuzz.yaml"
ENVIRON = {"FUZZ_KEY": "sk-fuzz-key", "FUZZ_URL": "http://127.0.0.1:9", "EMPTY": ""}

FUZZ = settings(
    # GATEWAY_FUZZ_EXAMPLES=5000 for a longer hunt than `make test` affords.
    max_examples=int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "250")),
    deadline=None,  # shared machines are noisy; these tests are about outcomes, not speed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Words the loader gives meaning to, so random documents reach deep validation and resolution.
POLICY_WORDS = [
    "version", "defaults", "providers", "prices", "tasks", "state", "timeout_s", "retry",
    "breaker", "attempts", "initial_backoff_s", "max_backoff_s", "jitter", "on", "fail_max",
    "reset_timeout_s", "success_threshold", "trip_on", "type", "model", "base_url", "api_key",
    "weight", "max_concurrency", "max_input_tokens", "options", "chain", "strategy",
    "deadline_s", "first_token_timeout_s", "on_midstream_failure", "provider", "params", "task",
    "input", "output", "cached_input", "backend", "url", "namespace", "default", "openai",
    "anthropic", "ollama", "azure_openai", "litellm", "local", "ordered", "cheapest", "fastest",
    "weighted", "resume", "raise", "memory", "redis", "messages", "api_version", "deployment",
    *(kind.value for kind in ErrorKind),
]  # fmt: skip
ENV_REFERENCES = ["${FUZZ_KEY}", "${FUZZ_URL}/v1", "${UNSET_VAR}", "${EMPTY:-x}", "${", "$${a}"]

names = st.one_of(st.sampled_from(POLICY_WORDS), st.text(max_size=10))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(POLICY_WORDS + ENV_REFERENCES),
    st.text(max_size=20),
)
trees = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(names, children, max_size=5),
    max_leaves=40,
)


def valid_document() -> dict[str, Any]:
    return {
        "version": 1,
        "defaults": {
            "timeout_s": 10,
            "retry": {
                "attempts": 2,
                "initial_backoff_s": 0.1,
                "max_backoff_s": 1,
                "on": ["timeout"],
            },
            "breaker": {"fail_max": 3, "reset_timeout_s": 5, "trip_on": ["server_error"]},
        },
        "providers": {
            "mini": {"type": "openai", "model": "gpt-4o-mini", "api_key": "${FUZZ_KEY}"},
            "sonnet": {
                "type": "anthropic",
                "model": "claude-sonnet-4-5",
                "api_key": "${UNSET_VAR}",
                "retry": {"attempts": 1},
                "options": {"default_max_tokens": 100},
            },
            "llama": {"type": "ollama", "model": "llama3.2", "base_url": "${FUZZ_URL}"},
        },
        "prices": {"llama3.2": {"input": 0, "output": 0}},
        "tasks": {
            "summarize": {
                "chain": ["sonnet", {"provider": "mini", "params": {"temperature": 0}}],
                "deadline_s": 20,
                "strategy": "cheapest",
            },
            "default": {
                "chain": [{"task": "summarize"}, "llama"],
                "on_midstream_failure": "resume",
            },
        },
        "state": {"backend": "memory"},
    }


def _tally(outcome: str) -> None:
    """Count outcomes in --hypothesis-show-statistics, to see how deep the fuzzing reaches."""
    if currently_in_test_context():
        event(outcome)


def assert_policy_or_policy_error(source: str | bytes) -> Policy | None:
    """Parse; a PolicyError must say where, a Policy must be internally consistent."""
    try:
        policy = parse_policy(source, source=SOURCE, environ=ENVIRON)
    except PolicyError as exc:
        message = str(exc)
        assert message.startswith(SOURCE) and exc.reason, message
        text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
        if exc.line is not None:
            assert 1 <= exc.line <= len(text.splitlines()) + 1, (exc.line, message)
        assert "sk-fuzz-key" not in message  # a key's value is never echoed
        _tally(f"PolicyError at {exc.path.split('.')[0].split('[')[0] or '(top)'}")
        return None
    _tally("valid policy")
    for task in policy.tasks.values():
        assert task.chain, task.name
        for entry in task.chain:
            assert entry.provider in policy.providers, (task.name, entry.provider)
    shown = json.dumps(policy.masked())  # the admin view must always serialise
    assert "sk-fuzz-key" not in shown and "sk-fuzz-key" not in repr(policy)
    return policy


def test_the_fuzzing_base_document_is_valid() -> None:
    # Mutations start from this document; if it did not load, they would test nothing.
    policy = assert_policy_or_policy_error(yaml.safe_dump(valid_document()))
    assert policy is not None
    assert [e.provider for e in policy.tasks["default"].chain] == ["sonnet", "mini", "llama"]
    assert policy.providers["sonnet"].unavailable_reason == "UNSET_VAR is not set"


@FUZZ
@given(st.text(max_size=400))
def test_random_text(text: str) -> None:
    assert_policy_or_policy_error(text)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    assert_policy_or_policy_error(data)


@FUZZ
@given(trees)
def test_random_trees(tree: Any) -> None:
    assert_policy_or_policy_error(yaml.safe_dump(tree, allow_unicode=True))


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*path, index))
    return found


@FUZZ
@given(st.data())
def test_mutations_of_a_valid_policy(data: st.DataObject) -> None:
    """A valid document with a few subtrees deleted, replaced or added: close to what people
    really write, so the mutations reach resolution (chains, splices, merges, env values)."""
    document = valid_document()
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        # Never the root: a whole random document is test_random_trees' job.
        path = data.draw(st.sampled_from(_paths(document)[1:]), label="path")
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        action = data.draw(st.sampled_from(["delete", "replace", "add"]), label="action")
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = data.draw(trees, label="value")
        elif isinstance(parent, dict):
            parent[data.draw(names, label="new key")] = data.draw(trees, label="value")
        else:
            parent.append(data.draw(trees, label="value"))
    assert_policy_or_policy_error(yaml.safe_dump(copy.deepcopy(document), allow_unicode=True))


# YAML features beyond plain data: anchors, merges, tags, directives, odd scalars.
YAML_FRAGMENTS = [
    "version: 1", "providers:", "tasks:", "  a: &p {type: openai, model: m}", "  b: *p",
    "  c:", "    <<: *p", "    <<: [*p, *p]", "  d: !!python/object:os.system ls",
    "  e: !!binary aGk=", "  f: !custom x", "  ? [complex, key]", "  : value",
    "  default: {chain: [a]}", "  default:",
    "    chain: [a, b, c]", "    chain: *p", "a: &x [*x]", "%YAML 1.1", "---", "...", "&a a: *a",
    "on: yes", "version: 2024-10-21", "version: 0x1", "version: 1.0", "timeout_s: .inf",
    "timeout_s: .nan", "- item", "key: 'unterminated", "\tindented: tab", "x: ${FUZZ_KEY}",
    "y: ${UNSET", "dup: 1", "dup: 2", "\x00", "\ufeffversion: 1", "providers: {a: {type: nope}}",
]  # fmt: skip


@FUZZ
@given(st.lists(st.sampled_from(YAML_FRAGMENTS), min_size=1, max_size=12))
def test_yaml_features(lines: list[str]) -> None:
    assert_policy_or_policy_error("\n".join(lines))


@pytest.mark.parametrize(
    "document",
    [
        "[" * 20_000 + "]" * 20_000,
        "{a: " * 20_000 + "1" + "}" * 20_000,
        "a:\n" + "".join(" " * (2 * depth + 1) + "- b:\n" for depth in range(1_000)),
        "a:\n" + "".join(" " * (2 * depth + 1) + "- b:\n" for depth in range(70)),
    ],
    ids=["lists", "mappings", "block", "block-past-the-limit"],
)
def test_deep_nesting_is_a_policy_error_not_a_recursion_error(document: str) -> None:
    with pytest.raises(PolicyError, match="nest"):
        parse_policy(document, source=SOURCE, environ=ENVIRON)


def test_an_alias_bomb_is_a_policy_error() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(PolicyError, match="expands to more than"):
        parse_policy("\n".join(lines), source=SOURCE, environ=ENVIRON)
