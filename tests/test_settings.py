"""Settings: the seed's variables from the environment and .env; keys stay secret."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway import LLMFactory
from gateway.errors import MissingCredentialsError
from gateway.settings import Settings, get_settings, require_key

SEED_VARIABLES = tuple(Settings.model_fields)

KEY = "sk-live-abcdefghijklmnop"


def test_defaults_with_nothing_set(isolated_settings: Path) -> None:
    settings = Settings()
    assert settings.LLM_PROVIDER == "openai"
    assert settings.OPENAI_API_KEY is None and settings.ANTHROPIC_API_KEY is None
    assert settings.OLLAMA_BASE_URL == "http://localhost:11434"


def test_seed_variables_are_read_from_the_environment(
    isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {
        "LLM_PROVIDER": "anthropic",
        "OPENAI_MODEL": "gpt-3.5-turbo",
        "OPENAI_BASE_URL": "http://openai.internal/v1",
        "AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com",
        "AZURE_OPENAI_DEPLOYMENT": "prod-4o",
        "OPENAI_API_VERSION": "2024-06-01",
        "ANTHROPIC_MODEL": "claude-3-opus-20240229",
        "ANTHROPIC_BASE_URL": "http://anthropic.internal",
        "OLLAMA_BASE_URL": "http://gpu-box:11434",
        "LOCAL_MODEL": "mistral",
    }
    for variable, value in values.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)

    settings = get_settings()

    assert {variable: getattr(settings, variable) for variable in values} == values
    assert isinstance(settings.OPENAI_API_KEY, SecretStr)
    assert settings.OPENAI_API_KEY.get_secret_value() == KEY


def test_a_dotenv_file_in_the_cwd_is_read_and_the_environment_wins(
    isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (isolated_settings / ".env").write_text(
        f"ANTHROPIC_API_KEY={KEY}\nLOCAL_MODEL=phi3\nLLM_PROVIDER=local\n"
    )
    monkeypatch.setenv("LLM_PROVIDER", "ollama")

    settings = get_settings()

    assert settings.ANTHROPIC_API_KEY is not None
    assert settings.ANTHROPIC_API_KEY.get_secret_value() == KEY
    assert settings.LOCAL_MODEL == "phi3"
    assert settings.LLM_PROVIDER == "ollama"


def test_get_settings_is_cached_until_cleared(
    isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert get_settings().LOCAL_MODEL == "llama3.2"
    monkeypatch.setenv("LOCAL_MODEL", "qwen2")
    assert get_settings().LOCAL_MODEL == "llama3.2"
    get_settings.cache_clear()
    assert get_settings().LOCAL_MODEL == "qwen2"


def test_keys_never_show_in_repr_str_or_dumps(
    isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.setenv(variable, KEY)
    settings = get_settings()
    for text in (
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        str(settings.model_dump()),
    ):
        assert KEY not in text
    assert "**********" in repr(settings)


async def test_providers_take_missing_options_from_settings(
    isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_MODEL", "gpt-from-env")
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_MODEL", "claude-from-env")
    monkeypatch.setenv("OLLAMA_BASE_URL", "http://gpu-box:11434/")
    monkeypatch.setenv("LOCAL_MODEL", "mistral")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", "prod-4o")

    services = [
        LLMFactory.create(name) for name in ("openai", "anthropic", "local", "azure_openai")
    ]
    try:
        assert [s.model for s in services] == [
            "gpt-from-env",
            "claude-from-env",
            "mistral",
            "prod-4o",
        ]
        assert services[2].base_url == "http://gpu-box:11434"  # type: ignore[attr-defined]
        for service in services:
            assert KEY not in repr(service)
    finally:
        for service in services:
            await service.aclose()


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        ("openai", "OPENAI_API_KEY is required when using OpenAI LLM"),
        ("anthropic", "ANTHROPIC_API_KEY is required when using Anthropic LLM"),
        ("azure_openai", "AZURE_OPENAI_API_KEY is required when using Azure OpenAI LLM"),
    ],
)
def test_a_missing_key_fails_at_create_with_the_seeds_message(
    isolated_settings: Path, provider: str, message: str
) -> None:
    with pytest.raises(MissingCredentialsError) as caught:
        LLMFactory.create(provider)
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, ValueError)


async def test_ollama_and_litellm_need_no_key(isolated_settings: Path) -> None:
    for llm in (LLMFactory.create("ollama"), LLMFactory.create("litellm", model="openai/x")):
        assert llm.model
        await llm.aclose()


def test_require_key_accepts_secret_and_plain_values() -> None:
    assert require_key(SecretStr(KEY), "X_KEY", "X") == KEY
    assert require_key(KEY, "X_KEY", "X") == KEY
    for empty in (None, "", SecretStr("")):
        with pytest.raises(MissingCredentialsError, match="X_KEY is required when using X LLM"):
            require_key(empty, "X_KEY", "X")


def test_a_missing_key_is_not_an_import_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in SEED_VARIABLES}
    code = textwrap.dedent(
        """
        import gateway, gateway.providers
        from gateway import LLMFactory
        print("imported")
        try:
            LLMFactory.create("openai")
        except ValueError as e:
            print(e)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "imported"
    assert lines[1].startswith("OPENAI_API_KEY is required when using OpenAI LLM")
