"""One exception hierarchy, so callers catch failures at the level they care about.

GatewayError
├── ConfigurationError (ValueError)   bad settings, unknown provider, missing key
│   ├── UnknownProviderError
│   ├── MissingCredentialsError
│   └── PolicyError                   routing.yaml is wrong: names the key path and line
├── MissingDependencyError (ImportError)  an optional SDK is not installed
├── InvalidRequestError (ValueError)  the caller's messages or parameters are wrong
├── UnknownTaskError (LookupError)
├── ProviderError                     one upstream call failed; `kind` says how
├── ProviderSaturated                 no local connection slot came free in time: nothing sent
└── RoutingError                      the router gave up; `attempts` says why
    ├── AllProvidersFailed
    │   └── RequestRefused            every candidate refused the request itself (a 4xx)
    ├── DeadlineExceeded (TimeoutError)
    └── StreamInterrupted             failed after text reached the caller
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway._outcomes import Attempt, ErrorKind

__all__ = [
    "AllProvidersFailed",
    "ConfigurationError",
    "DeadlineExceeded",
    "ErrorKind",
    "GatewayError",
    "InvalidRequestError",
    "MissingCredentialsError",
    "MissingDependencyError",
    "PolicyError",
    "ProviderError",
    "ProviderSaturated",
    "RequestRefused",
    "RoutingError",
    "StreamInterrupted",
    "UnknownProviderError",
    "UnknownTaskError",
]


class GatewayError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigurationError(GatewayError, ValueError):
    """Settings or policy that cannot work; the message says what to change."""


class UnknownProviderError(ConfigurationError):
    """`LLMFactory.create` was given a name no provider is registered under."""


class MissingCredentialsError(ConfigurationError):
    """A provider was created without the API key it needs."""


class PolicyError(ConfigurationError):
    """routing.yaml is invalid. `path` is the key path (e.g. `tasks.summarize.chain[1]`)."""

    def __init__(
        self, message: str, *, path: str = "", line: int | None = None, source: str = ""
    ) -> None:
        self.path = path
        self.line = line
        self.source = source
        where = source or "policy"
        if line is not None:
            where += f", line {line}"
        if path:
            where += f", at {path}"
        super().__init__(f"{where}: {message}")
        self.reason = message


class MissingDependencyError(GatewayError, ImportError):
    """An optional SDK is not installed; the message says what to `pip install`."""


class InvalidRequestError(GatewayError, ValueError):
    """The caller's messages or parameters are malformed; nothing was sent upstream."""


class ProviderSaturated(GatewayError):
    """No local connection slot to the provider came free within the pool's wait bound:
    nothing was sent, so it says nothing about the provider's health (the attempt is
    `saturated`, never a breaker failure)."""


class UnknownTaskError(GatewayError, LookupError):
    """A task name that the policy does not define, with no `default` task to fall back on."""


class ProviderError(GatewayError):
    """One call to one upstream failed.

    `kind` is the provider-independent reason (the retry and breaker policies use it),
    `status` the HTTP status when there was one, `retry_after_s` the upstream's own hint.
    The original SDK exception is chained as `__cause__`.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        provider: str = "",
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = ErrorKind(kind)
        self.provider = provider
        self.status = status
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        head = f"[{self.provider}] " if self.provider else ""
        status = f" (HTTP {self.status})" if self.status else ""
        return f"{head}{self.kind.value}{status}: {self.args[0]}"

    def __repr__(self) -> str:
        return (
            f"ProviderError(kind={self.kind.value!r}, provider={self.provider!r}, "
            f"status={self.status!r}, retry_after_s={self.retry_after_s!r})"
        )


class RoutingError(GatewayError):
    """The router could not produce an answer. `attempts` lists every candidate it considered."""

    def __init__(self, message: str, *, task: str = "", attempts: Sequence[Attempt] = ()) -> None:
        super().__init__(message)
        self.task = task
        self.attempts = list(attempts)


class AllProvidersFailed(RoutingError):
    """Every candidate of the chain failed or was skipped."""


class RequestRefused(AllProvidersFailed):
    """No candidate could serve the request as sent: each refused it as malformed (an upstream
    400, 404 for the model, 413, 422) or could not honour a field of it. Sending it again
    unchanged cannot help. `status` is the HTTP status that says so (the first upstream's, or
    400)."""

    def __init__(
        self, message: str, *, task: str = "", attempts: Sequence[Attempt] = (), status: int = 400
    ) -> None:
        super().__init__(message, task=task, attempts=attempts)
        self.status = status


class DeadlineExceeded(RoutingError, TimeoutError):
    """The task's `deadline_s` ran out before any candidate answered."""


class StreamInterrupted(RoutingError):
    """A stream failed after text had reached the caller; `partial_text` is what was sent."""

    def __init__(
        self,
        message: str,
        *,
        task: str = "",
        attempts: Sequence[Attempt] = (),
        partial_text: str = "",
    ) -> None:
        super().__init__(message, task=task, attempts=attempts)
        self.partial_text = partial_text
