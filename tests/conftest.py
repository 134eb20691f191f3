"""Fixtures shared by the test suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.settings import Settings, get_settings
from gateway.testing import FakeUpstream

SEED_VARIABLES = tuple(Settings.model_fields)
"""The environment variables `gateway.settings.Settings` reads."""


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    """A started FakeUpstream on 127.0.0.1, closed after the test."""
    async with FakeUpstream() as up:
        yield up


@pytest.fixture
def isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Settings as on a machine with none of the seed's variables and no .env.

    Unsets every seed variable, runs the test in an empty tmp cwd (so no stray `.env` is
    read) and clears the settings cache before and after. Yields that cwd.
    """
    for variable in SEED_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
