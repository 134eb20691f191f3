"""gateway: a resilient routing gateway for LLM calls.

    from gateway import Router
    router = Router.from_yaml("routing.yaml")
    reply = await router.generate([{"role": "user", "content": "Hi"}], task="summarize")

The public surface is re-exported here; everything else is private. Names are imported on
first use, so `import gateway` stays cheap and never imports a provider SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "LLMService": "gateway.providers",
    "LLMFactory": "gateway.providers",
    "Router": "gateway._router",
    "SyncRouter": "gateway._sync",
    "RoutedStream": "gateway._streaming",
    "RoutedCompletion": "gateway._router",
    "RoutedEmbeddings": "gateway._router",
    "Policy": "gateway.policy",
    "load_policy": "gateway.policy",
    "Settings": "gateway.settings",
    "Completion": "gateway.types",
    "ChatStream": "gateway.types",
    "Usage": "gateway.types",
    "ToolCall": "gateway.types",
    "ToolCallDelta": "gateway.types",
    "TextDelta": "gateway.types",
    "StreamEvent": "gateway.types",
    "Choice": "gateway.types",
    "Attempt": "gateway._outcomes",
    "AttemptOutcome": "gateway._outcomes",
    "RequestOutcome": "gateway._outcomes",
    "PolicyOutcome": "gateway._outcomes",
    "BreakerState": "gateway._outcomes",
    "RouterHooks": "gateway.hooks",
    "BaseHooks": "gateway.hooks",
    "ErrorKind": "gateway.errors",
    "GatewayError": "gateway.errors",
    "ConfigurationError": "gateway.errors",
    "UnknownProviderError": "gateway.errors",
    "MissingCredentialsError": "gateway.errors",
    "MissingDependencyError": "gateway.errors",
    "PolicyError": "gateway.errors",
    "InvalidRequestError": "gateway.errors",
    "UnknownTaskError": "gateway.errors",
    "ProviderError": "gateway.errors",
    "RoutingError": "gateway.errors",
    "AllProvidersFailed": "gateway.errors",
    "RequestRefused": "gateway.errors",
    "DeadlineExceeded": "gateway.errors",
    "StreamInterrupted": "gateway.errors",
}

__all__ = [
    "AllProvidersFailed",
    "Attempt",
    "AttemptOutcome",
    "BaseHooks",
    "BreakerState",
    "ChatStream",
    "Choice",
    "Completion",
    "ConfigurationError",
    "DeadlineExceeded",
    "ErrorKind",
    "GatewayError",
    "InvalidRequestError",
    "LLMFactory",
    "LLMService",
    "MissingCredentialsError",
    "MissingDependencyError",
    "Policy",
    "PolicyError",
    "PolicyOutcome",
    "ProviderError",
    "RequestOutcome",
    "RequestRefused",
    "RoutedCompletion",
    "RoutedEmbeddings",
    "RoutedStream",
    "Router",
    "RouterHooks",
    "RoutingError",
    "Settings",
    "StreamEvent",
    "StreamInterrupted",
    "SyncRouter",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "UnknownProviderError",
    "UnknownTaskError",
    "Usage",
    "load_policy",
]

if TYPE_CHECKING:
    from gateway._outcomes import (
        Attempt,
        AttemptOutcome,
        BreakerState,
        PolicyOutcome,
        RequestOutcome,
    )
    from gateway._router import RoutedCompletion, RoutedEmbeddings, Router
    from gateway._streaming import RoutedStream
    from gateway._sync import SyncRouter
    from gateway.errors import (
        AllProvidersFailed,
        ConfigurationError,
        DeadlineExceeded,
        ErrorKind,
        GatewayError,
        InvalidRequestError,
        MissingCredentialsError,
        MissingDependencyError,
        PolicyError,
        ProviderError,
        RequestRefused,
        RoutingError,
        StreamInterrupted,
        UnknownProviderError,
        UnknownTaskError,
    )
    from gateway.hooks import BaseHooks, RouterHooks
    from gateway.policy import Policy, load_policy
    from gateway.providers import LLMFactory, LLMService
    from gateway.settings import Settings
    from gateway.types import (
        ChatStream,
        Choice,
        Completion,
        StreamEvent,
        TextDelta,
        ToolCall,
        ToolCallDelta,
        Usage,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
