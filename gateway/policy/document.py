"""The file form ops write (routing.yaml): validation and the JSON Schema both come from it."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway._secrets import mask_url
from gateway.errors import ErrorKind
from gateway.policy.models import (
    MODEL_CONFIG,
    BreakerPolicy,
    Capability,
    Defaults,
    FailureRate,
    Price,
    ProviderSpec,
    Redirect,
    RetryPolicy,
    Seconds,
    StateSpec,
    Strategy,
    TaskKind,
)


def _described(model: type[BaseModel], field: str) -> str | None:
    return model.model_fields[field].description


class RetryOverrides(BaseModel):
    """A provider's changes to `defaults.retry`; keys left out keep the default."""

    model_config = MODEL_CONFIG

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

    model_config = MODEL_CONFIG

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
    failure_rate: FailureRate | None = Field(
        default=None, description=_described(BreakerPolicy, "failure_rate")
    )
    ramp_s: Seconds | None = Field(default=None, description=_described(BreakerPolicy, "ramp_s"))


class ProviderEntry(BaseModel):
    model_config = MODEL_CONFIG

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
    lacks: list[Capability] = Field(
        default_factory=list,
        description="What the model cannot do (tools, json_schema, images): requests that need "
        "it skip this provider as unsupported.",
    )
    dimensions: int | None = Field(
        default=None,
        ge=1,
        description="Embedding models: the length of the vectors the model returns (known "
        "OpenAI and Ollama embedding models need none).",
    )
    timeout_s: Seconds | None = Field(
        default=None, description="One attempt; default defaults.timeout_s."
    )
    max_response_bytes: int | None = Field(
        default=None,
        ge=1,
        description=_described(ProviderSpec, "max_response_bytes"),
    )
    retry: RetryOverrides | None = None
    breaker: BreakerOverrides | None = None
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Type-specific constructor keywords (azure_openai: api_version, deployment).",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if not url:
            return url
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:
            host = None
            parts = None
        if parts is None or parts.scheme not in {"http", "https"} or not host:
            raise ValueError(
                f"{mask_url(url)!r} is not an http(s) URL: write https://HOST[:PORT]/PATH"
            )
        return url


class ChainItem(BaseModel):
    """One chain entry: a provider name, `{provider, params}`, or `{task}` to splice a chain."""

    model_config = MODEL_CONFIG

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
    model_config = MODEL_CONFIG

    chain: list[ChainItem] = Field(
        min_length=1, description="Providers to try, in order (or as the strategy ranks them)."
    )
    kind: TaskKind = Field(
        default="chat",
        description="What the task serves: chat completions, or text embeddings "
        "(POST /v1/embeddings, router.embed).",
    )
    mixed_dimensions: bool = Field(
        default=False,
        description="kind embedding: let the chain's providers return vectors of different "
        "lengths (by default such a chain is refused: one index cannot hold both).",
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
    stop_on: frozenset[ErrorKind] | None = Field(
        default=None,
        description="Error kinds that end the request at once; default defaults.stop_on.",
    )
    redirect: dict[ErrorKind, Redirect] | None = Field(
        default=None,
        description="Error kinds that hand the request to another task's chain, e.g. "
        "{context_length: {task: long_context}}; default defaults.redirect.",
    )
    explore: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="strategy fastest: share of requests that try another candidate first "
        "(default 0.05).",
    )
    latency_half_life_s: Seconds | None = Field(
        default=None,
        description="strategy fastest: how fast old latency measurements fade (default 300).",
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
