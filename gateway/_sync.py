"""`SyncRouter`: the router for apps without an event loop.

The router's clients hold connection pools bound to one event loop, so the facade owns a
private loop on a daemon thread and runs every call there.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from gateway._router import RoutedCompletion, RoutedEmbeddings, Router
from gateway.policy import Policy
from gateway.types import Message, StreamEvent

T = TypeVar("T")


class SyncRouter:
    """`Router` with blocking methods. Close it (or use `with`) to stop its loop thread."""

    def __init__(self, policy: Policy, **router_kwargs: Any) -> None:
        self._start(lambda: Router(policy, **router_kwargs))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str] = "routing.yaml", **kwargs: Any) -> SyncRouter:
        """Load a policy file (watched for changes, as `Router.from_yaml`)."""
        sync = cls.__new__(cls)
        sync._start(lambda: Router.from_yaml(path, **kwargs))
        return sync

    def _start(self, build: Callable[[], Router]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="gateway-sync-router", daemon=True
        )
        self._thread.start()

        async def on_loop() -> Router:
            # Built on the facade's loop: the clients' connection pools belong to it.
            return build()

        self.router: Router = self._run(on_loop())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def generate(self, messages: Sequence[Message], **kwargs: Any) -> RoutedCompletion:
        return self._run(self.router.generate(messages, **kwargs))

    def generate_json(self, messages: Sequence[Message], **kwargs: Any) -> Any:
        return self._run(self.router.generate_json(messages, **kwargs))

    def embed(self, inputs: str | Sequence[str], **kwargs: Any) -> RoutedEmbeddings:
        """`Router.embed`: one vector per input."""
        return self._run(self.router.embed(inputs, **kwargs))

    def stream(self, messages: Sequence[Message], **kwargs: Any) -> Iterator[str]:
        stream = self.router.stream(messages, **kwargs)
        try:
            while True:
                try:
                    yield self._run(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(stream.aclose())

    def stream_events(self, messages: Sequence[Message], **kwargs: Any) -> Iterator[StreamEvent]:
        """`stream`, with every piece typed: `TextDelta` and `ToolCallDelta` (for tools)."""
        events = self.router.stream(messages, **kwargs).events()
        try:
            while True:
                try:
                    yield self._run(anext(events))
                except StopAsyncIteration:
                    return
        finally:
            self._run(events.aclose())

    def reload(self) -> bool:
        return self._run(self.router.reload())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self.router.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> SyncRouter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
