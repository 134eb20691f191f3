"""`LLMService` and its helpers under the module name callers import them by; they live in
`gateway.providers`, which is the import path to prefer."""

from gateway.providers._base import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TIMEOUT_S,
    Call,
    LLMService,
    estimate_tokens,
    parse_json_object,
)

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT_S",
    "Call",
    "LLMService",
    "estimate_tokens",
    "parse_json_object",
]
