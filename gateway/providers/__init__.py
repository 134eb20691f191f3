"""Providers: one module per upstream API behind `LLMService`, created by `LLMFactory`."""

from gateway.providers.base import LLMService
from gateway.providers.registry import LLMFactory

__all__ = ["LLMFactory", "LLMService"]
