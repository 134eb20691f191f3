"""LLMFactory: creating providers by name, registering new ones, plugins, lazy SDK imports."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway import LLMFactory
from gateway.errors import UnknownProviderError
from gateway.providers import LLMService
from gateway.testing import FakeUpstream
from gateway.types import ChatStream, Completion, Message, StreamEnd

BUILTINS = {
    "openai": "OpenAIService",
    "openai_http": "OpenAIService",
    "azure_openai": "AzureOpenAIService",
    "anthropic": "AnthropicService",
    "ollama": "OllamaService",
    "local": "OllamaService",
    "litellm": "LiteLLMService",
}
OPTIONS: dict[str, dict[str, Any]] = {
    "openai": {"api_key": "sk-test"},
    "openai_http": {"api_key": "sk-test"},
    "azure_openai": {"api_key": "az-test", "base_url": "http://127.0.0.1:9", "deployment": "d"},
    "anthropic": {"api_key": "ak-test"},
    "ollama": {},
    "local": {},
    "litellm": {"model": "openai/gpt-test"},
}


def run_python(code: str, *, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run `code` in a fresh interpreter; return its stdout, failing the test on an error."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


class EchoLLM(LLMService):
    """A provider defined outside the package, as a user would write one."""

    type_name = "echo"

    def __init__(self, *, name: str | None = None, model: str | None = None, **_: Any) -> None:
        super().__init__(name=name, model=model or "echo-1")

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        json_mode: bool = False,
        timeout_s: float | None = None,
        **params: Any,
    ) -> Completion:
        return Completion(text=str(messages[-1]["content"]), model=self.model)

    def stream(
        self,
        messages: Sequence[Message],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout_s: float | None = None,
        **params: Any,
    ) -> ChatStream:
        async def events() -> Any:
            yield str(messages[-1]["content"])
            yield StreamEnd(finish_reason="stop")

        return ChatStream(events(), model=self.model)


@pytest.fixture
def registered() -> Iterator[list[str]]:
    """Names a test registers; unregistered afterwards so the registry stays as it was."""
    names: list[str] = []
    yield names
    for name in names:
        LLMFactory.unregister(name)


@pytest.mark.parametrize("name", BUILTINS)
async def test_create_by_name(name: str, isolated_settings: Path) -> None:
    llm = LLMFactory.create(name, **OPTIONS[name])
    try:
        assert type(llm).__name__ == BUILTINS[name]
        assert llm.name == name
        assert isinstance(llm, LLMService)
    finally:
        await llm.aclose()


def test_unknown_name_lists_the_available_ones() -> None:
    with pytest.raises(UnknownProviderError) as caught:
        LLMFactory.create("nope")
    available = LLMFactory.available_providers()
    assert str(caught.value) == f"Unknown LLM provider: nope. Available: {available}"
    assert isinstance(caught.value, ValueError)  # what the seed's callers catch


def test_available_providers_lists_every_builtin_whose_sdk_is_installed() -> None:
    assert set(BUILTINS) <= set(LLMFactory.available_providers())


async def test_create_without_a_name_uses_llm_provider(
    isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_PROVIDER", "local")
    llm = LLMFactory.create()
    assert (type(llm).__name__, llm.name) == ("OllamaService", "local")
    await llm.aclose()


async def test_create_without_a_name_or_llm_provider_is_openai(
    isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    llm = LLMFactory.create()
    assert type(llm).__name__ == "OpenAIService"
    await llm.aclose()


async def test_register_a_class(registered: list[str]) -> None:
    LLMFactory.register("echo", EchoLLM)
    registered.append("echo")

    llm = LLMFactory.create("echo", model="e-2")

    assert isinstance(llm, EchoLLM) and llm.model == "e-2"
    assert "echo" in LLMFactory.available_providers()
    assert await llm.generate([{"role": "user", "content": "ping"}]) == "ping"


async def test_register_an_import_path(registered: list[str]) -> None:
    LLMFactory.register("fake", "gateway.testing.fake_llm:FakeLLM")
    registered.append("fake")

    llm = LLMFactory.create("fake", replies=["scripted"])

    assert type(llm).__name__ == "FakeLLM"
    assert await llm.generate([{"role": "user", "content": "hi"}]) == "scripted"


def test_register_refuses_what_is_not_a_provider() -> None:
    with pytest.raises(TypeError, match="LLMService subclass"):
        LLMFactory.register("bad", dict)  # type: ignore[arg-type]
    assert "bad" not in LLMFactory.registered_providers()


async def test_the_seeds_usage_examples_work_as_written(
    upstream: FakeUpstream, isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The seed's configuration, pointed at FakeUpstream instead of the real services.
    for variable, value in {
        "LLM_PROVIDER": "openai",
        "OPENAI_API_KEY": "sk-seed",
        "OPENAI_MODEL": "gpt-3.5-turbo",
        "OPENAI_BASE_URL": upstream.openai_base_url,
        "ANTHROPIC_API_KEY": "ak-seed",
        "ANTHROPIC_MODEL": "claude-3-sonnet-20240229",
        "ANTHROPIC_BASE_URL": upstream.anthropic_base_url,
        "OLLAMA_BASE_URL": upstream.ollama_base_url,
        "LOCAL_MODEL": "llama2",
    }.items():
        monkeypatch.setenv(variable, value)

    # --- as in the seed, with `from gateway import LLMFactory` ---
    from gateway import LLMFactory

    # Create a provider (uses LLM_PROVIDER from settings)
    llm = LLMFactory.create()

    # Or specify explicitly
    llm = LLMFactory.create("openai")
    llm = LLMFactory.create("anthropic")
    llm = LLMFactory.create("local")

    # Generate text
    messages = [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "Hello!"},
    ]
    response = await llm.generate(messages)

    providers = LLMFactory.available_providers()
    # --- end of the seed's code ---
    await llm.aclose()

    assert response == "Hello from llama2. This is a fake reply."
    assert {"openai", "anthropic", "local", "ollama"} <= set(providers)
    for name, model in [
        ("openai", "gpt-3.5-turbo"),
        ("anthropic", "claude-3-sonnet-20240229"),
        ("local", "llama2"),
    ]:
        service = LLMFactory.create(name)
        assert await service.generate(messages) == f"Hello from {model}. This is a fake reply."
        await service.aclose()
    assert [(r.protocol, r.model) for r in upstream.requests] == [
        ("ollama", "llama2"),
        ("openai", "gpt-3.5-turbo"),
        ("anthropic", "claude-3-sonnet-20240229"),
        ("ollama", "llama2"),
    ]

    # The seed's "best practices": fall back when a provider cannot be created.
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    from gateway.settings import get_settings

    get_settings.cache_clear()
    try:
        llm = LLMFactory.create("anthropic")
    except (ImportError, ValueError) as e:
        assert "ANTHROPIC_API_KEY is required when using Anthropic LLM" in str(e)
        llm = LLMFactory.create("openai")  # Fallback
    assert type(llm).__name__ == "OpenAIService"
    await llm.aclose()


@pytest.mark.parametrize(
    ("provider", "sdk"),
    [("anthropic", "anthropic"), ("openai", "openai"), ("azure_openai", "openai")],
)
def test_a_missing_sdk_is_needed_only_by_client_sdk_and_says_what_to_install(
    provider: str, sdk: str
) -> None:
    # sys.modules[name] = None is how Python marks a module as unimportable: find_spec
    # answers None and `import` raises ModuleNotFoundError, as if it were not installed.
    out = run_python(
        f"""
        import sys
        sys.modules[{sdk!r}] = None
        from gateway import LLMFactory
        print({provider!r} in LLMFactory.available_providers())
        options = dict(api_key="k", model="m", base_url="http://127.0.0.1:9")
        print(type(LLMFactory.create({provider!r}, **options)).__name__)
        try:
            LLMFactory.create({provider!r}, client="sdk", **options)
        except ImportError as e:
            print(f"ImportError: {{e}}")
        """
    )
    assert out.splitlines() == [
        "True",
        BUILTINS[provider],
        f"ImportError: {sdk} package required. Install with: pip install 'gateway[{sdk}]'",
    ]


def test_a_missing_litellm_says_what_to_install() -> None:
    out = run_python(
        """
        import sys
        sys.modules["litellm"] = None
        from gateway import LLMFactory
        print("litellm" in LLMFactory.available_providers())
        try:
            LLMFactory.create("litellm", api_key="k", model="m")
        except ImportError as e:
            print(f"ImportError: {e}")
        """
    )
    assert out.splitlines() == [
        "False",
        "ImportError: litellm package required. Install with: pip install 'gateway[litellm]'",
    ]


@pytest.mark.parametrize(
    ("module", "sdk"),
    [
        ("gateway.providers._sdk_anthropic", "anthropic"),
        ("gateway.providers._sdk_openai", "openai"),
        ("gateway.providers._litellm", "litellm"),
    ],
)
def test_importing_a_provider_module_without_its_sdk_says_what_to_install(
    module: str, sdk: str
) -> None:
    out = run_python(
        f"""
        import sys
        sys.modules[{sdk!r}] = None
        from gateway.errors import MissingDependencyError
        try:
            import {module}
        except MissingDependencyError as e:
            print(f"{{isinstance(e, ImportError)}} {{e}}")
        """
    )
    assert out.strip() == (
        f"True {sdk} package required. Install with: pip install 'gateway[{sdk}]'"
    )


def test_an_entry_point_plugin_is_created_by_name(tmp_path: Path) -> None:
    package = tmp_path / "gw_plugin_demo"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            from gateway.testing.fake_llm import FakeLLM

            class PluginLLM(FakeLLM):
                type_name = "plugged"
            """
        )
    )
    dist_info = tmp_path / "gw_plugin_demo-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: gw-plugin-demo\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[gateway.providers]\nplugged = gw_plugin_demo:PluginLLM\n"
    )

    out = run_python(
        """
        from gateway import LLMFactory
        llm = LLMFactory.create("plugged")
        print(type(llm).__module__, type(llm).__name__, llm.name)
        print("plugged" in LLMFactory.available_providers())
        """,
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert out.splitlines() == ["gw_plugin_demo PluginLLM plugged", "True"]


HEAVY = ("openai", "anthropic", "litellm", "httpx", "httpx2", "fastapi", "uvicorn", "redis")


async def test_default_clients_serve_calls_without_importing_any_sdk(
    upstream: FakeUpstream,
) -> None:
    # In a fresh interpreter, so nothing another test imported counts: the four SDK-capable
    # and local types, created and called on their default transport.
    out = await asyncio.to_thread(
        run_python,
        f"""
        import asyncio, sys
        import gateway, gateway.providers
        from gateway.providers import LLMFactory

        async def main():
            for name, options in [
                ("openai", dict(base_url={upstream.openai_base_url!r}, model="gpt-t")),
                ("azure_openai", dict(base_url={upstream.azure_endpoint!r}, model="dep-t")),
                ("anthropic", dict(base_url={upstream.anthropic_base_url!r}, model="cl-t")),
                ("ollama", dict(base_url={upstream.ollama_base_url!r}, model="ll-t")),
            ]:
                async with LLMFactory.create(name, api_key="k", **options) as llm:
                    reply = await llm.complete([{{"role": "user", "content": "hi"}}])
                    print(name, reply.text.split(".")[0])

        asyncio.run(main())
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        """,
    )
    assert out.splitlines() == [
        "openai Hello from gpt-t",
        "azure_openai Hello from dep-t",
        "anthropic Hello from cl-t",
        "ollama Hello from ll-t",
        "[]",
    ]


def test_importing_the_public_api_imports_no_sdk() -> None:
    out = run_python(
        """
        import sys
        from gateway import Router, LLMFactory
        LLMFactory.available_providers()
        print(sorted(m for m in ("openai", "anthropic", "litellm") if m in sys.modules))
        """
    )
    assert out.strip() == "[]"
