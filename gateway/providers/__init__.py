"""Providers: each a wire codec spoken through a transport, behind `LLMService`, created by
name with `LLMFactory`.

The modules with a leading underscore are the implementation; what is named here is the
public surface. Importing this package imports no SDK: `client="sdk"` loads one on use.
"""

from gateway.providers._anthropic import AnthropicService
from gateway.providers._base import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TIMEOUT_S,
    Call,
    LLMService,
    estimate_tokens,
    parse_json_object,
)
from gateway.providers._codec import StreamReader, WireCodec, WireEvent, WireRequest
from gateway.providers._codec_anthropic import AnthropicCodec
from gateway.providers._codec_ollama import OllamaCodec
from gateway.providers._codec_openai import OpenAIChatCodec
from gateway.providers._errors import Redactor
from gateway.providers._ollama import OllamaService
from gateway.providers._openai import AzureOpenAIService, OpenAIService
from gateway.providers._registry import ENTRY_POINT_GROUP, LLMFactory
from gateway.providers._transport import (
    AiohttpTransport,
    HTTPResponse,
    HTTPTransport,
    MockRequest,
    MockResponse,
    MockTransport,
    Transport,
    UpstreamStatusError,
)
from gateway.providers._wire import WireService

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT_S",
    "ENTRY_POINT_GROUP",
    "AiohttpTransport",
    "AnthropicCodec",
    "AnthropicService",
    "AzureOpenAIService",
    "Call",
    "HTTPResponse",
    "HTTPTransport",
    "LLMFactory",
    "LLMService",
    "MockRequest",
    "MockResponse",
    "MockTransport",
    "OllamaCodec",
    "OllamaService",
    "OpenAIChatCodec",
    "OpenAIService",
    "Redactor",
    "StreamReader",
    "Transport",
    "UpstreamStatusError",
    "WireCodec",
    "WireEvent",
    "WireRequest",
    "WireService",
    "estimate_tokens",
    "parse_json_object",
]
