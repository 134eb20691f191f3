"""The resolved policy: what the router reads, defaults already merged into every provider."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from gateway._secrets import SHORTEST_SCRUBBED, mask_tree, mask_url, masked_as, scrub
from gateway.errors import ErrorKind, UnknownTaskError

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
Strategy = Literal["ordered", "cheapest", "fastest", "weighted", "least_busy"]
TaskKind = Literal["chat", "embedding"]
"""What a task's requests are: chat completions (the default) or text embeddings."""

MODEL_CONFIG = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
"""Shared by the file-form models too: immutable, unknown keys rejected, no NaN or infinity."""
Seconds = Annotated[float, Field(gt=0)]
"""A duration in seconds; zero or negative would mean "fail at once", never what ops meant."""


def _kinds_schema(kinds: frozenset[ErrorKind]) -> dict[str, Any]:
    # A set has no order; the schema file must be byte-stable across runs.
    return {"default": sorted(kind.value for kind in kinds)}


class RetryPolicy(BaseModel):
    model_config = MODEL_CONFIG

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


class FailureRate(BaseModel):
    """Open the breaker on the share of failed calls, beside the consecutive count."""

    model_config = MODEL_CONFIG

    window_s: Seconds = Field(default=30.0, description="The rolling window calls are counted in.")
    min_calls: int = Field(
        default=10, ge=1, description="Calls the window needs before the share is judged."
    )
    threshold: float = Field(
        default=0.5, gt=0, le=1, description="Failed share (of trip_on kinds) that opens it."
    )


class BreakerPolicy(BaseModel):
    model_config = MODEL_CONFIG

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
    failure_rate: FailureRate | None = Field(
        default=FailureRate(),
        description="Also open on the failed share of recent calls; null: consecutive only.",
    )
    ramp_s: Seconds | None = Field(
        default=None,
        description="Slow start: after closing, the provider's share of first picks grows "
        "from a small fraction to all of it over this long; null: at once.",
    )

    @field_serializer("trip_on", when_used="json")
    def _sorted_kinds(self, kinds: frozenset[ErrorKind]) -> list[str]:
        return sorted(kind.value for kind in kinds)


class Redirect(BaseModel):
    """Where a request goes when one of its candidates fails with a given error kind."""

    model_config = MODEL_CONFIG

    task: str = Field(min_length=1, description="The task whose chain takes the request over.")


class Defaults(BaseModel):
    model_config = MODEL_CONFIG

    timeout_s: Seconds = Field(default=30.0, description="Time allowed for one attempt.")
    retry: RetryPolicy = RetryPolicy()
    breaker: BreakerPolicy = BreakerPolicy()
    stop_on: frozenset[ErrorKind] = Field(
        default=frozenset(),
        description="Error kinds that end a request at once instead of falling through "
        "(tasks may set their own).",
    )
    redirect: dict[ErrorKind, Redirect] = Field(
        default_factory=dict,
        description="Error kinds that send a request to another task's chain "
        "(tasks may set their own).",
    )

    @field_serializer("stop_on", when_used="json")
    def _sorted_stop_on(self, kinds: frozenset[ErrorKind]) -> list[str]:
        return sorted(kind.value for kind in kinds)


class Price(BaseModel):
    """USD per 1M tokens."""

    model_config = MODEL_CONFIG

    input: float = Field(ge=0, description="USD per 1M input tokens.")
    output: float = Field(ge=0, description="USD per 1M output tokens.")
    cached_input: float | None = Field(
        default=None, ge=0, description="USD per 1M input tokens read from the prompt cache."
    )
    max_input_tokens: int | None = Field(
        default=None, ge=1, description="The model's context window, when the bundled map lacks it."
    )


class StateSpec(BaseModel):
    model_config = MODEL_CONFIG

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
                f"{mask_url(url)!r} is not a Redis URL: write redis://HOST:PORT/DB "
                "(or rediss:// for TLS, unix:///path.sock)"
            )
        return url


class ChainEntry(BaseModel):
    model_config = MODEL_CONFIG

    provider: str
    params: dict[str, Any] = Field(default_factory=dict)
    dimensions: int | None = None
    """Embedding tasks: the length of the vectors this entry answers with (its `dimensions`
    param, else the provider's), when known."""

    @model_serializer(mode="wrap")
    def _without_unknown_dimensions(self, handler: SerializerFunctionWrapHandler) -> Any:
        # A chat task's entries have no length: shown as they were before embeddings existed.
        data = handler(self)
        if isinstance(data, dict) and data.get("dimensions") is None:
            data.pop("dimensions", None)
        return data


class TaskSpec(BaseModel):
    model_config = MODEL_CONFIG

    name: str
    chain: tuple[ChainEntry, ...] = Field(min_length=1)
    kind: TaskKind = "chat"
    mixed_dimensions: bool = False
    """Embedding tasks: whether the chain may answer with vectors of different lengths."""
    strategy: Strategy = "ordered"
    deadline_s: Seconds | None = None
    first_token_timeout_s: Seconds | None = None
    on_midstream_failure: Literal["raise", "resume"] = "raise"
    stop_on: frozenset[ErrorKind] = frozenset()
    """Error kinds that end the request at once: no further candidate is tried."""
    redirect: tuple[tuple[ErrorKind, str], ...] = ()
    """(error kind, task): a candidate failing with that kind hands the request to that task's
    chain instead of the next candidate."""
    explore: float = Field(default=0.05, ge=0, le=1)
    """`fastest`: the share of requests that try another candidate first, to re-measure it."""
    latency_half_life_s: Seconds = 300.0
    """`fastest`: how fast an old latency measurement loses weight."""

    def redirect_for(self, kind: ErrorKind) -> str | None:
        return next((task for k, task in self.redirect if k == kind), None)


FACTORY_KEYWORDS = frozenset(
    {"name", "model", "api_key", "base_url", "timeout_s", "max_connections", "max_response_bytes"}
)


Capability = Literal["tools", "json_schema", "images"]
"""What a request may need of a model: tool calling, schema-constrained output, image input."""


class ProviderSpec(BaseModel):
    model_config = MODEL_CONFIG

    name: str
    type: str
    model: str | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None
    weight: float = Field(default=1.0, ge=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    max_input_tokens: int | None = Field(default=None, ge=1)
    lacks: frozenset[Capability] = frozenset()
    """What this model cannot do: a request that needs it skips the provider (`unsupported`)."""
    dimensions: int | None = Field(default=None, ge=1)
    """Embedding models: the length of the vectors it returns (declared, or known from
    `KNOWN_DIMENSIONS`); None: not known."""
    timeout_s: Seconds = 30.0
    # None: the type's own bound (16 MiB for the built-in types), and nothing passed to the
    # factory, so a plugin type that knows no such keyword still loads.
    max_response_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Largest answer accepted, in bytes after decompression (default 16 MiB); "
        "a larger one is an invalid_response and the next candidate is tried.",
    )
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
            "max_response_bytes": self.max_response_bytes,
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
            "max_response_bytes": self.max_response_bytes,
            "options": self.options,
            "retry": self.retry.model_dump(mode="json"),
            "breaker": self.breaker.model_dump(mode="json"),
        }
        encoded = json.dumps(material, sort_keys=True, default=repr).encode()
        return hashlib.sha256(encoded).hexdigest()

    # Values the loader took from the environment (value -> `${NAME}`): shown as references.
    _revealed: dict[str, str] = PrivateAttr(default_factory=dict)

    def masked(self) -> dict[str, Any]:
        """This provider as JSON-able data, every secret in it shown as "***" (or as the
        `${NAME}` it was read from): the key, a URL's credentials, secret-named options."""
        shown: dict[str, Any] = mask_tree(self.model_dump(mode="json"))
        return scrub(shown, self._known_secrets(), shortest=SHORTEST_SCRUBBED)

    def _known_secrets(self) -> dict[str, str]:
        # The key itself, wherever else it is repeated (a header under a name that does not
        # look secret); a value read from the environment shows as its reference instead.
        key = self.api_key.get_secret_value() if self.api_key else None
        return {**masked_as([key]), **self._revealed}

    def __repr_args__(self) -> Any:
        known = self._known_secrets()
        for name, value in super().__repr_args__():
            if name == "options" or isinstance(value, str):
                value = scrub(mask_tree(value), known, shortest=SHORTEST_SCRUBBED)
            yield name, value


class Policy(BaseModel):
    model_config = MODEL_CONFIG

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

    _revealed: dict[str, str] = PrivateAttr(default_factory=dict)

    def remember_revealed(self, revealed: dict[str, str]) -> None:
        """Note the values the loader took from the environment (value -> `${NAME}`), so that
        `masked()` and the providers' reprs show those references, never the values."""
        self._revealed = dict(revealed)
        for spec in self.providers.values():
            spec._revealed = self._revealed

    def __repr__(self) -> str:
        # The whole tree would repeat every option and parameter; these say which policy it is.
        return (
            f"Policy(source={self.source!r}, sha256={self.sha256[:12]!r}, "
            f"providers={sorted(self.providers)}, tasks={sorted(self.tasks)})"
        )

    def masked(self) -> dict[str, Any]:
        """The policy in effect as JSON-able data: API keys, URL credentials and secret-named
        options (headers included) shown as "***", values taken from the environment as their
        `${NAME}`, and each provider's key scrubbed wherever else the policy repeats it."""
        keys = [spec.api_key.get_secret_value() for spec in self.providers.values() if spec.api_key]
        known = {**masked_as(keys), **self._revealed}
        return scrub(self._masked_tree(), known, shortest=SHORTEST_SCRUBBED)

    def _masked_tree(self) -> dict[str, Any]:
        # mask_tree goes over each part whose keys are field or option names, never over a
        # mapping keyed by names ops chose (a provider may be called `token`).
        return {
            "version": self.version,
            "defaults": self.defaults.model_dump(mode="json"),
            "providers": {name: spec.masked() for name, spec in self.providers.items()},
            "prices": {
                model: price.model_dump(mode="json", exclude_none=True)
                for model, price in self.prices.items()
            },
            "tasks": {
                name: mask_tree(spec.model_dump(mode="json")) for name, spec in self.tasks.items()
            },
            "state": mask_tree(self.state.model_dump(mode="json")),
            "sha256": self.sha256,
            "source": self.source,
            "loaded_at": self.loaded_at,
        }
