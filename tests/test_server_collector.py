"""`gateway serve` sets the garbage collector for a server once its app is loaded
(gateway/server/_collector.py): the heap as loaded is frozen, and the young generation's
threshold raised, so that in-flight requests' objects are not scanned and promoted every few
requests."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.server._collector import YOUNG_THRESHOLD
from gateway.server._config import ServerSettings
from gateway.server._connections import ServeConfig


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    raise AssertionError("never called: the test only loads the app")


@pytest.fixture
def collector_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector_restored")
def test_loading_the_served_app_freezes_the_heap_and_raises_the_young_threshold() -> None:
    _, middle, old = gc.get_threshold()
    config = ServeConfig(bare_app, settings=ServerSettings.from_env({}))
    assert gc.get_freeze_count() == 0

    config.load()

    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)


@pytest.mark.usefixtures("collector_restored")
def test_garbage_is_collected_before_the_heap_is_frozen() -> None:
    """Freezing keeps what it freezes for good: a reference cycle no longer used at load
    time is collected first, not frozen with the rest."""

    class Node:
        partner: Any = None

    first, second = Node(), Node()
    first.partner, second.partner = second, first
    alive = weakref.ref(first)
    gc.disable()  # no pass of its own may collect the cycle before the load does
    try:
        del first, second
        assert alive() is not None
        ServeConfig(bare_app, settings=ServerSettings.from_env({})).load()
        assert alive() is None
    finally:
        gc.enable()
