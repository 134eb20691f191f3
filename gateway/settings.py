"""Environment configuration: the variables the providers' SDKs read too (and `.env` when
present)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway._secrets import mask_tree
from gateway.errors import MissingCredentialsError

ENV_FILE = ".env"
"""Read from the current directory, by `Settings` and by `policy_environ()` alike."""


class Settings(BaseSettings):
    """Every key is a `SecretStr`: repr, logs and errors show `**********`; the repr shows each
    URL with its credentials masked."""

    model_config = SettingsConfigDict(env_file=ENV_FILE, extra="ignore", case_sensitive=True)

    LLM_PROVIDER: str = "openai"

    OPENAI_API_KEY: SecretStr | None = None
    OPENAI_MODEL: str = "gpt-4o-mini"
    OPENAI_BASE_URL: str | None = None

    AZURE_OPENAI_API_KEY: SecretStr | None = None
    AZURE_OPENAI_ENDPOINT: str | None = None
    AZURE_OPENAI_DEPLOYMENT: str | None = None
    OPENAI_API_VERSION: str = "2024-10-21"

    ANTHROPIC_API_KEY: SecretStr | None = None
    ANTHROPIC_MODEL: str = "claude-sonnet-4-5"
    ANTHROPIC_BASE_URL: str | None = None

    OLLAMA_BASE_URL: str = "http://localhost:11434"
    LOCAL_MODEL: str = "llama3.2"

    def __repr_args__(self) -> Any:
        # An endpoint may carry a credential (`http://TOKEN@host`, `?api-key=`): shown masked.
        for name, value in super().__repr_args__():
            yield name, mask_tree({name: value})[name] if isinstance(value, str) else value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def policy_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a policy's `${VAR}` reads: the variables of `.env` (when the current directory has
    one), overridden by the process environment (`environ`, default `os.environ`). The same
    file and the same precedence as `Settings`, so a key put in `.env` serves both."""
    path = Path(ENV_FILE)
    from_file = dotenv_values(path, encoding="utf-8") if path.is_file() else {}
    merged = {name: value for name, value in from_file.items() if value is not None}
    merged.update(os.environ if environ is None else environ)
    return merged


def require_key(value: SecretStr | str | None, variable: str, provider_label: str) -> str:
    """The key as plain text, or an error naming the variable to set."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not value:
        raise MissingCredentialsError(
            f"{variable} is required when using {provider_label} LLM: "
            f"export {variable}=... or pass api_key= to the provider"
        )
    return value
