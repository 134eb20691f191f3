"""`LLMFactory` under the module name callers import it by; it lives in `gateway.providers`,
which is the import path to prefer."""

from gateway.providers._registry import ENTRY_POINT_GROUP, LLMFactory

__all__ = ["ENTRY_POINT_GROUP", "LLMFactory"]
