"""The routing policy: routing.yaml as ops write it, checked and resolved for the router.

Reading a policy takes four steps, each of which can only fail with a `PolicyError` that
names the key path, the line, the bad value and the fix:

1. YAML is composed into nodes, so every value keeps its line; duplicate keys are rejected
   (PyYAML would silently keep the last one) and booleans follow YAML 1.2 (`on:` is a key,
   not `True`; `2024-10-21` stays text).
2. `${VAR}` and `${VAR:-default}` are substituted in string values of the parsed tree.
3. The tree is validated against the file-form models (these also give the JSON Schema).
4. The file form is resolved: defaults merged key by key into each provider, `{task: other}`
   chain entries spliced in, and every name cross-checked.

Only the first problem is raised (the topmost in the file); when validation found several, the
message says how many more there are.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from gateway.errors import ErrorKind, PolicyError, UnknownTaskError

__all__ = [
    "BreakerPolicy",
    "ChainEntry",
    "Defaults",
    "Policy",
    "Price",
    "ProviderSpec",
    "RetryPolicy",
    "StateSpec",
    "TaskSpec",
    "load_policy",
    "parse_policy",
    "policy_json_schema",
    "read_policy_yaml",
]

DEFAULT_TASK = "default"
DEFAULT_RETRY_ON = frozenset(
    {
        ErrorKind.RATE_LIMIT,
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECTION,
        ErrorKind.SERVER_ERROR,
        ErrorKind.OVERLOADED,
    }
)
DEFAULT_TRIP_ON = DEFAULT_RETRY_ON | {ErrorKind.AUTH}
Strategy = Literal["ordered", "cheapest", "fastest", "weighted"]

_CONFIG = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
Seconds = Annotated[float, Field(gt=0)]
"""A duration in seconds; zero or negative would mean "fail at once", never what ops meant."""


def _kinds_schema(kinds: frozenset[ErrorKind]) -> dict[str, Any]:
    # A set has no order; the schema file must be byte-stable across runs.
    return {"default": sorted(kind.value for kind in kinds)}


# --------------------------------------------------------------------------------------------
# The resolved policy: what the router reads.
# --------------------------------------------------------------------------------------------


class RetryPolicy(BaseModel):
    model_config = _CONFIG

    attempts: int = Field(
        default=3,
        ge=1,
        description="Calls to one provider for one request, the first one included.",
    )
    initial_backoff_s: Seconds = Field(default=0.25, description="Wait before the first retry.")
    max_backoff_s: Seconds = Field(
        default=8.0, description="Cap on the exponentially growing wait."
    )
    jitter: bool = Field(
        default=True, description="Randomise each wait so clients do not retry in step."
    )
    on: frozenset[ErrorKind] = Field(
        default=DEFAULT_RETRY_ON,
        description="Error kinds worth retrying on the same provider.",
        json_schema_extra=_kinds_schema(DEFAULT_RETRY_ON),
    )

    @model_validator(mode="after")
    def _backoff_grows(self) -> RetryPolicy:
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError(
                f"max_backoff_s ({self.max_backoff_s:g}) is below initial_backoff_s "
                f"({self.initial_backoff_s:g}): raise max_backoff_s or lower initial_backoff_s"
            )
        return self

    @field_serializer("on", when_used="json")
    def _sorted_kinds(self, kinds: frozenset[ErrorKind]) -> list[str]:
        return sorted(kind.value for kind in kinds)


class BreakerPolicy(BaseModel):
    model_config = _CONFIG

    fail_max: int = Field(
        default=5, ge=1, description="Consecutive failures that open the breaker."
    )
    reset_timeout_s: Seconds = Field(
        default=30.0,
        description="How long an open breaker rejects calls before letting one through.",
    )
    success_threshold: int = Field(
        default=1,
        ge=1,
        description="Successes in the half-open state that close the breaker again.",
    )
    trip_on: frozenset[ErrorKind] = Field(
        default=DEFAULT_TRIP_ON,
        description="Error kinds that count as a failure of the provider (not of the request).",
        json_schema_extra=_kinds_schema(DEFAULT_TRIP_ON),
    )

    @field_serializer("trip_on", when_used="json")
    def _sorted_kinds(self, kinds: frozenset[ErrorKind]) -> list[str]:
        return sorted(kind.value for kind in kinds)


class Defaults(BaseModel):
    model_config = _CONFIG

    timeout_s: Seconds = Field(default=30.0, description="Time allowed for one attempt.")
    retry: RetryPolicy = RetryPolicy()
    breaker: BreakerPolicy = BreakerPolicy()


class Price(BaseModel):
    """USD per 1M tokens."""

    model_config = _CONFIG

    input: float = Field(ge=0, description="USD per 1M input tokens.")
    output: float = Field(ge=0, description="USD per 1M output tokens.")
    cached_input: float | None = Field(
        default=None, ge=0, description="USD per 1M input tokens read from the prompt cache."
    )
    max_input_tokens: int | None = Field(
        default=None, ge=1, description="The model's context window, when the bundled map lacks it."
    )


class StateSpec(BaseModel):
    model_config = _CONFIG

    backend: Literal["memory", "redis"] = Field(
        default="memory",
        description="Where breaker state lives: this process, or Redis shared by all.",
    )
    # repr=False: the URL may carry a password; masked() shows it safely.
    url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Redis URL (backend: redis).", repr=False
    )
    namespace: str = Field(
        default="gateway",
        min_length=1,
        description="Prefix of every Redis key this gateway writes.",
    )

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: str, info: ValidationInfo) -> str:
        scheme = urlsplit(url).scheme
        if info.data.get("backend") == "redis" and scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(
                f"{_mask_url(url)!r} is not a Redis URL: write redis://HOST:PORT/DB "
                "(or rediss:// for TLS, unix:///path.sock)"
            )
        return url


class ChainEntry(BaseModel):
    model_config = _CONFIG

    provider: str
    params: dict[str, Any] = Field(default_factory=dict)


class TaskSpec(BaseModel):
    model_config = _CONFIG

    name: str
    chain: tuple[ChainEntry, ...] = Field(min_length=1)
    strategy: Strategy = "ordered"
    deadline_s: Seconds | None = None
    first_token_timeout_s: Seconds | None = None
    on_midstream_failure: Literal["raise", "resume"] = "raise"


_FACTORY_KEYWORDS = frozenset(
    {"name", "model", "api_key", "base_url", "timeout_s", "max_connections"}
)


class ProviderSpec(BaseModel):
    model_config = _CONFIG

    name: str
    type: str
    model: str | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None
    weight: float = Field(default=1.0, ge=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    max_input_tokens: int | None = Field(default=None, ge=1)
    timeout_s: Seconds = 30.0
    retry: RetryPolicy = RetryPolicy()
    breaker: BreakerPolicy = BreakerPolicy()
    options: dict[str, Any] = Field(default_factory=dict)
    unavailable_reason: str | None = None

    @property
    def available(self) -> bool:
        return self.unavailable_reason is None

    def factory_options(self) -> dict[str, Any]:
        """Keywords for `LLMFactory.create(self.type, **opts)`; unset values are left out."""
        options: dict[str, Any] = {
            "name": self.name,
            "model": self.model,
            "api_key": self.api_key.get_secret_value() if self.api_key else None,
            "base_url": self.base_url,
            "timeout_s": self.timeout_s,
            "max_connections": self.max_concurrency,
            **self.options,
        }
        return {key: value for key, value in options.items() if value is not None}

    def fingerprint(self) -> str:
        """A stable hash of what shapes the client and its breaker.

        A reload keeps a provider (client, pool and breaker state) whose fingerprint did not
        change. Weight and max_input_tokens are routing hints read per request, so they are
        left out: changing them must not reset a breaker.
        """
        material = {
            "name": self.name,
            "type": self.type,
            "model": self.model,
            "base_url": self.base_url,
            "api_key": self.api_key.get_secret_value() if self.api_key else None,
            "timeout_s": self.timeout_s,
            "max_concurrency": self.max_concurrency,
            "options": self.options,
            "retry": self.retry.model_dump(mode="json"),
            "breaker": self.breaker.model_dump(mode="json"),
        }
        encoded = json.dumps(material, sort_keys=True, default=repr).encode()
        return hashlib.sha256(encoded).hexdigest()

    def masked(self) -> dict[str, Any]:
        shown = self.model_dump(mode="json")
        shown["api_key"] = "***" if self.api_key else None
        if self.base_url:
            shown["base_url"] = _mask_url(self.base_url)
        shown["options"] = _mask_secret_keys(self.options)
        return shown


class Policy(BaseModel):
    model_config = _CONFIG

    version: Literal[1] = 1
    defaults: Defaults = Defaults()
    providers: dict[str, ProviderSpec] = Field(default_factory=dict)
    prices: dict[str, Price] = Field(default_factory=dict)
    tasks: dict[str, TaskSpec] = Field(default_factory=dict)
    state: StateSpec = StateSpec()
    sha256: str = ""
    source: str = "<object>"
    loaded_at: float = Field(default_factory=time.time)

    def task(self, name: str) -> TaskSpec:
        """The task called `name`, else the `default` task, else `UnknownTaskError`."""
        spec = self.tasks.get(name) or self.tasks.get(DEFAULT_TASK)
        if spec is None:
            defined = ", ".join(sorted(self.tasks)) or "none"
            raise UnknownTaskError(
                f"unknown task {name!r}; the policy defines: {defined}. "
                f"Use one of those, or add a {DEFAULT_TASK!r} task to catch every other name"
            )
        return spec

    def masked(self) -> dict[str, Any]:
        """The policy in effect as JSON-able data, with API keys shown as "***" or null."""
        state = self.state.model_dump(mode="json")
        state["url"] = _mask_url(self.state.url)
        return {
            "version": self.version,
            "defaults": self.defaults.model_dump(mode="json"),
            "providers": {name: spec.masked() for name, spec in self.providers.items()},
            "prices": {
                model: price.model_dump(mode="json", exclude_none=True)
                for model, price in self.prices.items()
            },
            "tasks": {name: spec.model_dump(mode="json") for name, spec in self.tasks.items()},
            "state": state,
            "sha256": self.sha256,
            "source": self.source,
            "loaded_at": self.loaded_at,
        }


def _mask_url(url: str) -> str:
    """The URL with any password replaced by ***, so it can be shown."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


_SECRET_NAME = re.compile(r"(?:^|_)(?:key|secret|password|token|credentials?)$", re.IGNORECASE)


def _is_secret_name(name: object) -> bool:
    return isinstance(name, str) and _SECRET_NAME.search(name) is not None


def _mask_secret_keys(options: Mapping[str, Any]) -> dict[str, Any]:
    return {key: "***" if _is_secret_name(key) else value for key, value in options.items()}


# --------------------------------------------------------------------------------------------
# The file form: what ops write. Validation and the JSON Schema both come from these models.
# --------------------------------------------------------------------------------------------


def _described(model: type[BaseModel], field: str) -> str | None:
    return model.model_fields[field].description


class RetryOverrides(BaseModel):
    """A provider's changes to `defaults.retry`; keys left out keep the default."""

    model_config = _CONFIG

    attempts: int | None = Field(
        default=None, ge=1, description=_described(RetryPolicy, "attempts")
    )
    initial_backoff_s: Seconds | None = Field(
        default=None, description=_described(RetryPolicy, "initial_backoff_s")
    )
    max_backoff_s: Seconds | None = Field(
        default=None, description=_described(RetryPolicy, "max_backoff_s")
    )
    jitter: bool | None = Field(default=None, description=_described(RetryPolicy, "jitter"))
    on: frozenset[ErrorKind] | None = Field(default=None, description=_described(RetryPolicy, "on"))


class BreakerOverrides(BaseModel):
    """A provider's changes to `defaults.breaker`; keys left out keep the default."""

    model_config = _CONFIG

    fail_max: int | None = Field(
        default=None, ge=1, description=_described(BreakerPolicy, "fail_max")
    )
    reset_timeout_s: Seconds | None = Field(
        default=None, description=_described(BreakerPolicy, "reset_timeout_s")
    )
    success_threshold: int | None = Field(
        default=None, ge=1, description=_described(BreakerPolicy, "success_threshold")
    )
    trip_on: frozenset[ErrorKind] | None = Field(
        default=None, description=_described(BreakerPolicy, "trip_on")
    )


class ProviderEntry(BaseModel):
    model_config = _CONFIG

    type: str = Field(description="The LLMFactory name: openai, anthropic, ollama, ...")
    model: str | None = Field(default=None, description="The upstream model name.")
    base_url: str | None = Field(default=None, description="Override the upstream endpoint.")
    api_key: str | None = Field(
        default=None,
        description='Usually "${SOME_API_KEY}"; unset leaves the provider unavailable.',
    )
    weight: float = Field(
        default=1.0, ge=0, description="Share of traffic under strategy: weighted."
    )
    max_concurrency: int | None = Field(
        default=None, ge=1, description="In-flight calls allowed; more are skipped as saturated."
    )
    max_input_tokens: int | None = Field(
        default=None, ge=1, description="Skip this provider for prompts larger than this."
    )
    timeout_s: Seconds | None = Field(
        default=None, description="One attempt; default defaults.timeout_s."
    )
    retry: RetryOverrides | None = None
    breaker: BreakerOverrides | None = None
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Type-specific constructor keywords (azure_openai: api_version, deployment).",
    )


class ChainItem(BaseModel):
    """One chain entry: a provider name, `{provider, params}`, or `{task}` to splice a chain."""

    model_config = _CONFIG

    provider: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    task: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, data: Any) -> Any:
        return {"provider": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_target(self) -> ChainItem:
        if self.provider is not None and self.task is not None:
            raise ValueError(
                "a chain entry names a provider or a task, not both: split it into two entries"
            )
        if self.provider is None and self.task is None:
            raise ValueError(
                "a chain entry needs `provider: NAME` (or `task: OTHER` to splice in that "
                "task's chain)"
            )
        if self.task is not None and self.params:
            raise ValueError(
                f"params go on provider entries; set them in task {self.task!r}'s own chain"
            )
        if "messages" in self.params:
            raise ValueError("params cannot set `messages`: the caller provides them")
        return self


class TaskEntry(BaseModel):
    model_config = _CONFIG

    chain: list[ChainItem] = Field(
        min_length=1, description="Providers to try, in order (or as the strategy ranks them)."
    )
    strategy: Strategy = Field(
        default="ordered", description="How the chain is ordered per request."
    )
    deadline_s: Seconds | None = Field(
        default=None, description="The whole request: all candidates, retries and waits included."
    )
    first_token_timeout_s: Seconds | None = Field(
        default=None,
        description="Streaming: give up on a candidate that sends nothing for this long.",
    )
    on_midstream_failure: Literal["raise", "resume"] = Field(
        default="raise",
        description="A stream that breaks after sending text: raise, or resume elsewhere.",
    )


class PolicyDocument(BaseModel):
    """A routing policy file (routing.yaml)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, title="gateway routing policy"
    )

    version: Literal[1] = Field(description="The file format version; always 1.")
    defaults: Defaults = Field(
        default=Defaults(), description="Apply to every provider unless it overrides them."
    )
    providers: dict[str, ProviderEntry] = Field(
        description="Named provider instances; chains refer to these names."
    )
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description="USD per 1M tokens by model name; overrides the bundled price map.",
    )
    tasks: dict[str, TaskEntry] = Field(
        min_length=1, description="Named routes; a task called `default` catches unknown names."
    )
    state: StateSpec = StateSpec()


_ENV_REFERENCE_SCHEMA = {
    "type": "string",
    "pattern": r"^.*\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}.*$",
    "description": "An environment reference, ${VAR} or ${VAR:-default}, resolved at load.",
}


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of the file as ops write it, for editors and CI."""
    schema = PolicyDocument.model_json_schema()
    defs = schema["$defs"]
    provider_ref = {"type": "object", "additionalProperties": False}
    defs["ChainItem"] = {
        "description": ChainItem.__doc__,
        "anyOf": [
            {"type": "string", "description": "A provider name."},
            {
                **provider_ref,
                "properties": {
                    "provider": {"type": "string"},
                    "params": {
                        "type": "object",
                        "description": "Keywords for each call (temperature, max_tokens...).",
                    },
                },
                "required": ["provider"],
            },
            {
                **provider_ref,
                "properties": {"task": {"type": "string", "description": "Splice in its chain."}},
                "required": ["task"],
            },
        ],
    }
    schema = _allow_env_references(schema)
    defs = schema["$defs"]
    defs["EnvReference"] = _ENV_REFERENCE_SCHEMA
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


_ENV_TYPES = frozenset({"number", "integer", "boolean"})


def _allow_env_references(node: Any) -> Any:
    """Let number and boolean fields also take "${VAR}", as the loader substitutes those."""
    if isinstance(node, list):
        return [_allow_env_references(item) for item in node]
    if not isinstance(node, dict):
        return node
    walked = {key: _allow_env_references(value) for key, value in node.items()}
    if "anyOf" in walked:
        # Splice a wrapped alternative into its parent's anyOf instead of nesting one.
        walked["anyOf"] = [
            part
            for option in walked["anyOf"]
            for part in (option["anyOf"] if list(option) == ["anyOf"] else [option])
        ]
    kind = walked.get("type")
    if "const" in walked or not isinstance(kind, str) or kind not in _ENV_TYPES:
        return walked
    annotations = {k: walked.pop(k) for k in ("title", "description", "default") if k in walked}
    return {**annotations, "anyOf": [walked, {"$ref": "#/$defs/EnvReference"}]}


# --------------------------------------------------------------------------------------------
# YAML with line numbers and without silent surprises.
# --------------------------------------------------------------------------------------------

KeyPath = tuple[str | int, ...]
"""A key path into the document: ("tasks", "summarize", "chain", 1)."""

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_TAG + name for name in ("str", "int", "float", "bool", "null"))
_MAX_VALUES = 100_000
_MAX_DEPTH = 64
"""A real policy nests about six levels deep; far deeper is a mistake, or a hostile file that
would otherwise end in a RecursionError instead of a message."""


class _PolicyLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and no timestamps.

    YAML 1.1 reads `on`, `off`, `yes`, `no` as booleans, which would turn the `on:` key of a
    retry policy into `True`, and dates like `2024-10-21` (an Azure api_version) into
    datetime objects.
    """


_PolicyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in {_TAG + "bool", _TAG + "timestamp"}]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PolicyLoader.add_implicit_resolver(
    _TAG + "bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def format_path(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class _TreeBuilder:
    """Turns composed YAML nodes into plain data, recording the line of every key path."""

    def __init__(self, loader: _PolicyLoader, source: str) -> None:
        self.loader = loader
        self.source = source
        self.lines: dict[KeyPath, int] = {}
        self._open: set[int] = set()
        self._count = 0

    def fail(self, message: str, path: KeyPath, node: yaml.Node) -> PolicyError:
        return PolicyError(
            message,
            path=format_path(path),
            line=node.start_mark.line + 1,
            source=self.source,
        )

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self._count += 1
        if self._count > _MAX_VALUES:
            raise self.fail(
                f"the document expands to more than {_MAX_VALUES} values (nested YAML aliases?): "
                "write the policy out plainly",
                path,
                node,
            )
        if len(path) > _MAX_DEPTH:
            raise self.fail(
                f"the document nests more than {_MAX_DEPTH} levels deep here: a policy needs "
                "far fewer; flatten it",
                path,
                node,
            )
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _SCALAR_TAGS:
                raise self.fail(
                    f"unsupported YAML tag {node.tag!r}: write a plain string, number, "
                    "true/false or null",
                    path,
                    node,
                )
            return self.loader.construct_object(node)
        if id(node) in self._open:
            raise self.fail("a YAML alias refers to itself: remove the recursion", path, node)
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode) and node.tag == _TAG + "seq":
                items = []
                for index, item in enumerate(node.value):
                    self.lines[(*path, index)] = item.start_mark.line + 1
                    items.append(self.build(item, (*path, index)))
                return items
            if isinstance(node, yaml.MappingNode) and node.tag == _TAG + "map":
                return self._mapping(node, path)
            raise self.fail(
                f"unsupported YAML tag {node.tag!r}: use a plain mapping or list", path, node
            )
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        explicit: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        # Merge keys (`<<: *anchor`) first, so explicit keys can take their lines over.
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                sources = (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                for source_node in sources:
                    if not isinstance(source_node, yaml.MappingNode):
                        raise self.fail("`<<` merges only mappings", path, source_node)
                    for key, value in self.build(source_node, path).items():
                        merged.setdefault(key, value)
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                continue
            key = self._key(key_node, path)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise PolicyError(
                    f"duplicate key {key!r} (first at line {first_line[key]}): YAML keeps only "
                    "one of them, so delete or rename the other",
                    path=format_path((*path, key)),
                    line=line,
                    source=self.source,
                )
            first_line[key] = line
            self.lines[(*path, key)] = line
            explicit[key] = self.build(value_node, (*path, key))
        return {**merged, **explicit}

    def _key(self, node: yaml.Node, path: KeyPath) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail("a key is a mapping or list: keys must be plain names", path, node)
        key = self.build(node, path)
        if not isinstance(key, str):
            raise self.fail(
                f'key {node.value!r} is not text: keys must be names; quote it ("{node.value}":)',
                path,
                node,
            )
        return key


def read_policy_yaml(text: str, *, source: str = "<string>") -> Any:
    """The plain data tree of a policy file, read the way `parse_policy` reads it.

    YAML 1.2 booleans, dates kept as text, duplicate keys rejected; no `${VAR}` substitution
    and no validation. For tools that check the file form (e.g. against the JSON Schema).
    """
    return _read_yaml(text, source)[0]


def _read_yaml(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    loader: _PolicyLoader | None = None
    try:
        loader = _PolicyLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None, {}
        builder = _TreeBuilder(loader, source)
        builder.lines[()] = node.start_mark.line + 1
        return builder.build(node, ()), builder.lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "unreadable"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        raise PolicyError(
            f"malformed YAML: {problem}{context}; fix the syntax on this line",
            line=mark.line + 1 if mark else None,
            source=source,
        ) from None
    except yaml.YAMLError as exc:
        # Reader errors (control characters, bad encodings) carry a position but no line.
        raise PolicyError(f"unreadable YAML: {exc}", source=source) from None
    except RecursionError:
        # PyYAML composes nested collections recursively, before our depth check can run.
        raise PolicyError(
            f"the document nests far more than {_MAX_DEPTH} levels deep: a policy needs "
            "about six; flatten it",
            source=source,
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


# --------------------------------------------------------------------------------------------
# ${VAR} substitution.
# --------------------------------------------------------------------------------------------

_REFERENCE = re.compile(
    r"\$\$\{"  # an escaped "${", kept as text
    r"|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
    r"|\$\{"  # anything else that starts like a reference is a typo
)


class _Unset:
    """Stands for a value whose `${VAR}` is not set; the key is dropped from the tree."""


_UNSET = _Unset()


class _Substituter:
    def __init__(
        self, environ: Mapping[str, str], lines: Mapping[KeyPath, int], source: str
    ) -> None:
        self.environ = environ
        self.lines = lines
        self.source = source
        self.unset_by_provider: dict[str, list[str]] = {}

    def walk(self, value: Any, path: KeyPath) -> Any:
        if isinstance(value, dict):
            walked = {key: self.walk(item, (*path, key)) for key, item in value.items()}
            return {key: item for key, item in walked.items() if item is not _UNSET}
        if isinstance(value, list):
            walked_items = [self.walk(item, (*path, i)) for i, item in enumerate(value)]
            return [item for item in walked_items if item is not _UNSET]
        if isinstance(value, str) and "${" in value:
            return self._substitute(value, path)
        return value

    def _substitute(self, text: str, path: KeyPath) -> str | _Unset:
        missing: list[str] = []

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name = match.group("name")
            if name is None:
                shown = _describe(text, path)
                raise PolicyError(
                    f"malformed environment reference in {shown}: write ${{NAME}} or "
                    "${NAME:-default} (or $${ for a literal ${)",
                    path=format_path(path),
                    line=_line_of(path, self.lines),
                    source=self.source,
                )
            value = self.environ.get(name, "")
            if value:
                return value
            default = match.group("default")
            if default is not None:
                return default
            missing.append(name)
            return ""

        result = _REFERENCE.sub(replace, text)
        if not missing:
            return result
        if len(path) >= 3 and path[0] == "providers":
            # A provider whose key is not exported loads as unavailable: the other providers
            # still serve, and the reason names the variable to set.
            reasons = self.unset_by_provider.setdefault(str(path[1]), [])
            reasons.extend(name for name in missing if name not in reasons)
            return _UNSET
        raise PolicyError(
            f"environment variable {missing[0]} is not set: export {missing[0]}=... or write "
            f"${{{missing[0]}:-default}}",
            path=format_path(path),
            line=_line_of(path, self.lines),
            source=self.source,
        )


def _unavailable_reason(names: Sequence[str] | None) -> str | None:
    if not names:
        return None
    if len(names) == 1:
        return f"{names[0]} is not set"
    return f"{', '.join(names)} are not set"


# --------------------------------------------------------------------------------------------
# Turning pydantic's errors into ones that name the key, the value and the fix.
# --------------------------------------------------------------------------------------------


def _line_of(path: KeyPath, lines: Mapping[KeyPath, int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def _unwrap(annotation: Any) -> Any:
    """The useful type inside Optional[...] and Annotated[...]."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            options = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation


def _annotation_at(loc: Sequence[str | int]) -> Any:
    """The declared type at a location in PolicyDocument, or None when it cannot be told."""
    annotation: Any = PolicyDocument
    for part in loc:
        annotation = _unwrap(annotation)
        origin = get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return None
            annotation = field.annotation
        elif origin is dict:
            annotation = get_args(annotation)[1]
        elif origin in (list, tuple, frozenset, set):
            annotation = get_args(annotation)[0]
        else:
            return None
    return _unwrap(annotation)


def _choices(annotation: Any) -> list[str]:
    if get_origin(annotation) is Literal:
        return [str(arg) for arg in get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, ErrorKind):
        return [kind.value for kind in annotation]
    return []


def _did_you_mean(word: object, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_YAML_TYPE_NAMES = {
    dict: "a mapping",
    list: "a list",
    str: "text",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _describe(value: Any, path: KeyPath) -> str:
    if any(_is_secret_name(part) for part in path):
        return "(a value not shown: it is a secret)"
    kind = _YAML_TYPE_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, dict | list):
        return kind
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return shown if isinstance(value, str | int | float | bool) else f"{kind} {shown}"


def _explain(error: Mapping[str, Any], loc: KeyPath) -> str:
    """One pydantic error as a sentence: what is wrong, the value, and what to write instead."""
    kind = error["type"]
    context = error.get("ctx") or {}
    value = error.get("input")
    field = next((part for part in reversed(loc) if isinstance(part, str)), "value")
    got = _describe(value, loc)
    if kind == "missing":
        return f"`{field}` is required here: {_missing_hint(field)}"
    if kind == "extra_forbidden":
        model = _annotation_at(loc[:-1])
        is_model = isinstance(model, type) and issubclass(model, BaseModel)
        valid = list(model.model_fields) if is_model else []
        listing = f" Valid keys here: {', '.join(valid)}." if valid else ""
        return f"unknown key {field!r}{_did_you_mean(field, valid)}.{listing}"
    if kind in {"greater_than", "greater_than_equal"}:
        bound = context.get("gt", context.get("ge"))
        relation = "greater than" if kind == "greater_than" else "at least"
        unit = " seconds" if field.endswith("_s") else ""
        return f"{field} must be {relation} {bound:g}{unit}, got {got}: use a larger value"
    if kind in {"literal_error", "enum"}:
        options = _choices(_annotation_at(loc))
        listing = ", ".join(options) if options else context.get("expected", "")
        noun = "error kind" if field in {"on", "trip_on"} or isinstance(loc[-1], int) else field
        return f"unknown {noun} {got}{_did_you_mean(value, options)}; use one of: {listing}"
    if kind == "too_short":
        if field == "chain":
            return "chain is empty: list at least one provider, e.g. `chain: [my_provider]`"
        if field == "tasks":
            return "no tasks are defined: add at least one (a `default` task catches any name)"
        return f"{field} is empty: add at least {context.get('min_length', 1)} item(s)"
    if kind in {"value_error", "assertion_error"}:
        return str(context.get("error", error["msg"]))
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        if field == "chain":
            return (
                f"chain entries are a provider name, {{provider: NAME, params: {{...}}}} or "
                f"{{task: OTHER}}; got {got}"
            )
        return f"{field} must be a mapping of `key: value` lines, got {got}"
    if kind in {"list_type", "tuple_type", "set_type", "frozen_set_type"}:
        return f"{field} must be a list, e.g. [a, b], got {got}"
    if kind == "string_type":
        return f"{field} must be text, got {got}: quote it"
    if kind.startswith("int_"):
        return f"{field} must be a whole number, got {got}: write digits only, e.g. 3"
    if kind.startswith("float_") or kind == "finite_number":
        return f"{field} must be a finite number, got {got}: write a number, e.g. 30"
    if kind.startswith("bool_"):
        return f"{field} must be true or false, got {got}"
    return f"{error['msg']}; got {got}"


def _missing_hint(field: str) -> str:
    if field == "type":
        from gateway.providers.registry import LLMFactory

        types = ", ".join(sorted(LLMFactory.registered_providers()))
        return f"add `type: ...`, one of: {types}"
    if field == "version":
        return "write `version: 1` at the top of the file"
    if field == "providers":
        return "add `providers:` with named instances, e.g. `mini: {type: openai}`"
    if field == "tasks":
        return "add `tasks:` with at least one, e.g. `default: {chain: [mini]}`"
    return f"add `{field}: ...`"


def _as_path(loc: Sequence[str | int]) -> KeyPath:
    # pydantic marks a bad dict key with a trailing "[key]"; the key itself is already in loc.
    return tuple(part for part in loc if part != "[key]")


def _translate(
    exc: ValidationError, lines: Mapping[KeyPath, int], source: str, prefix: KeyPath = ()
) -> PolicyError:
    problems = []
    for error in exc.errors(include_url=False):
        loc = (*prefix, *_as_path(error["loc"]))
        problems.append((_line_of(loc, lines) or 0, loc, _explain(error, loc)))
    problems.sort(key=lambda problem: problem[0])
    line, loc, message = problems[0]
    if len(problems) > 1:
        more = len(problems) - 1
        message += f" (and {more} more problem{'s' if more > 1 else ''} after this one)"
    return PolicyError(message, path=format_path(loc), line=line or None, source=source)


# --------------------------------------------------------------------------------------------
# Resolution: defaults merged, chains spliced, names cross-checked.
# --------------------------------------------------------------------------------------------


_Model = TypeVar("_Model", bound=BaseModel)


class _Resolver:
    def __init__(
        self,
        document: PolicyDocument,
        lines: Mapping[KeyPath, int],
        source: str,
        unset_by_provider: Mapping[str, Sequence[str]],
    ) -> None:
        self.document = document
        self.lines = lines
        self.source = source
        self.unset_by_provider = unset_by_provider

    def fail(self, message: str, path: KeyPath) -> PolicyError:
        return PolicyError(
            message, path=format_path(path), line=_line_of(path, self.lines), source=self.source
        )

    def providers(self) -> dict[str, ProviderSpec]:
        from gateway.providers.registry import LLMFactory

        registered = sorted(LLMFactory.registered_providers())
        defaults = self.document.defaults
        specs: dict[str, ProviderSpec] = {}
        for name, entry in self.document.providers.items():
            path: KeyPath = ("providers", name)
            if entry.type not in registered:
                raise self.fail(
                    f"unknown provider type {entry.type!r}{_did_you_mean(entry.type, registered)}"
                    f"; registered types: {', '.join(registered)}",
                    (*path, "type"),
                )
            for key in sorted(_FACTORY_KEYWORDS & set(entry.options)):
                raise self.fail(
                    f"options.{key} would clash with the provider's own setting: "
                    f"move it out of options (write `{key}:` on the provider)",
                    (*path, "options", key),
                )
            specs[name] = ProviderSpec(
                name=name,
                type=entry.type,
                model=entry.model,
                base_url=entry.base_url or None,
                api_key=SecretStr(entry.api_key) if entry.api_key else None,
                weight=entry.weight,
                max_concurrency=entry.max_concurrency,
                max_input_tokens=entry.max_input_tokens,
                timeout_s=entry.timeout_s if entry.timeout_s is not None else defaults.timeout_s,
                retry=self._merge(RetryPolicy, defaults.retry, entry.retry, (*path, "retry")),
                breaker=self._merge(
                    BreakerPolicy, defaults.breaker, entry.breaker, (*path, "breaker")
                ),
                options=dict(entry.options),
                unavailable_reason=_unavailable_reason(self.unset_by_provider.get(name)),
            )
        return specs

    def _merge(
        self, model: type[_Model], default: _Model, overrides: BaseModel | None, path: KeyPath
    ) -> _Model:
        if overrides is None:
            return default
        changes = overrides.model_dump(exclude_none=True)
        try:
            return model.model_validate({**default.model_dump(), **changes})
        except ValidationError as exc:
            raise _translate(exc, self.lines, self.source, prefix=path) from None

    def tasks(self, providers: Mapping[str, ProviderSpec]) -> dict[str, TaskSpec]:
        specs: dict[str, TaskSpec] = {}
        for name, entry in self.document.tasks.items():
            chain = self._chain(name, providers, trail=(), via=("tasks", name), entered_at=None)
            self._reject_duplicates(name, chain)
            if entry.strategy == "weighted" and all(
                providers[link.entry.provider].weight == 0 for link in chain
            ):
                raise self.fail(
                    "strategy weighted needs at least one provider in the chain with weight > 0",
                    ("tasks", name, "strategy"),
                )
            specs[name] = TaskSpec(
                name=name,
                chain=tuple(link.entry for link in chain),
                strategy=entry.strategy,
                deadline_s=entry.deadline_s,
                first_token_timeout_s=entry.first_token_timeout_s,
                on_midstream_failure=entry.on_midstream_failure,
            )
        return specs

    def _chain(
        self,
        task: str,
        providers: Mapping[str, ProviderSpec],
        trail: tuple[str, ...],
        via: KeyPath,
        entered_at: KeyPath | None,
    ) -> list[_Link]:
        """The task's chain with `{task: other}` entries replaced by other's chain."""
        if task in trail:
            cycle = " -> ".join((*trail[trail.index(task) :], task))
            raise self.fail(
                f"tasks refer to each other in a cycle ({cycle}): remove one `task:` entry",
                via,
            )
        resolved: list[_Link] = []
        for index, item in enumerate(self.document.tasks[task].chain):
            path: KeyPath = ("tasks", task, "chain", index)
            if item.task is not None:
                if item.task not in self.document.tasks:
                    defined = list(self.document.tasks)
                    raise self.fail(
                        f"task {item.task!r} is not defined{_did_you_mean(item.task, defined)}; "
                        f"defined tasks: {', '.join(defined)}",
                        (*path, "task"),
                    )
                resolved += self._chain(
                    item.task, providers, (*trail, task), path, entered_at or path
                )
                continue
            provider = str(item.provider)
            if provider not in providers:
                defined = list(providers)
                raise self.fail(
                    f"provider {provider!r} is not defined{_did_you_mean(provider, defined)}; "
                    f"defined providers: {', '.join(defined) or 'none'}. Add it under "
                    "`providers:` or fix the name",
                    path,
                )
            entry = ChainEntry(provider=provider, params=dict(item.params))
            resolved.append(_Link(entry, origin=path, entered_at=entered_at or path))
        return resolved

    def _reject_duplicates(self, task: str, chain: Sequence[_Link]) -> None:
        first_seen: dict[str, tuple[int, _Link]] = {}
        for position, link in enumerate(chain):
            provider = link.entry.provider
            if provider in first_seen:
                earlier_position, earlier = first_seen[provider]
                raise self.fail(
                    f"provider {provider!r} appears twice in the resolved chain of task {task!r}: "
                    f"at position {earlier_position} (from {format_path(earlier.origin)}) and "
                    f"position {position} (from {format_path(link.origin)}); keep one of them",
                    link.entered_at,
                )
            first_seen[provider] = (position, link)


@dataclass(frozen=True, slots=True)
class _Link:
    """One resolved chain entry, with where it was written and where it joined this chain."""

    entry: ChainEntry
    origin: KeyPath
    entered_at: KeyPath


# --------------------------------------------------------------------------------------------
# Entry points.
# --------------------------------------------------------------------------------------------


def parse_policy(
    text: str | bytes, *, source: str = "<string>", environ: Mapping[str, str] | None = None
) -> Policy:
    """Read a policy from YAML text; every problem is a `PolicyError` naming path and line."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise PolicyError(
                f"the file is not UTF-8 text (bad byte at offset {exc.start}): save it as UTF-8",
                source=source,
            ) from None
    tree, lines = _read_yaml(text, source)
    if not isinstance(tree, dict):
        found = "empty" if tree is None else _YAML_TYPE_NAMES.get(type(tree), "a scalar")
        raise PolicyError(
            f"a policy is a mapping with version, providers and tasks keys; this document is "
            f"{found}",
            line=lines.get(()),
            source=source,
        )
    version = tree.get("version")
    if "version" in tree and not (type(version) is int and version == 1):
        raise PolicyError(
            f"version {_describe(version, ('version',))} is not supported: this gateway reads "
            "version 1 files (write `version: 1`)",
            path="version",
            line=lines.get(("version",)),
            source=source,
        )
    substituter = _Substituter(os.environ if environ is None else environ, lines, source)
    tree = substituter.walk(tree, ())
    try:
        document = PolicyDocument.model_validate(tree)
    except ValidationError as exc:
        raise _translate(exc, lines, source) from None
    resolver = _Resolver(document, lines, source, substituter.unset_by_provider)
    providers = resolver.providers()
    return Policy(
        version=document.version,
        defaults=document.defaults,
        providers=providers,
        prices=dict(document.prices),
        tasks=resolver.tasks(providers),
        state=document.state,
        sha256=hashlib.sha256(raw).hexdigest(),
        source=source,
        loaded_at=time.time(),
    )


def load_policy(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Policy:
    """Read a policy file; a missing or unreadable file is a `PolicyError` too."""
    source = os.fspath(path)
    try:
        data = Path(source).read_bytes()
    except OSError as exc:
        raise PolicyError(
            f"cannot read the policy file ({exc.strerror or exc}): check the path",
            source=source,
        ) from None
    return parse_policy(data, source=source, environ=environ)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.policy",
        description="Check routing policy files, or print the JSON Schema of the format.",
    )
    parser.add_argument("--schema", action="store_true", help="print the JSON Schema and exit")
    parser.add_argument("files", nargs="*", help="policy files to check")
    args = parser.parse_args(argv)
    if args.schema:
        print(json.dumps(policy_json_schema(), indent=2))
        return 0
    if not args.files:
        parser.error("give policy files to check, or --schema")
    status = 0
    for file in args.files:
        try:
            policy = load_policy(file)
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        unavailable = [
            f"{name} ({spec.unavailable_reason})"
            for name, spec in policy.providers.items()
            if spec.unavailable_reason
        ]
        note = f"; unavailable: {', '.join(unavailable)}" if unavailable else ""
        counts = f"{_count(policy.providers, 'provider')}, {_count(policy.tasks, 'task')}"
        print(f"{file}: ok, {counts}{note}")
    return status


def _count(items: Mapping[str, Any], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


if __name__ == "__main__":
    sys.exit(main())
