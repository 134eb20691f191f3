"""A FakeUpstream on its own event loop in a background thread, for tests whose clients block.

The client libraries under test (the openai SDK's sync client, LangChain, instructor, litellm)
block the calling thread, so the fake they reach through `gateway serve` cannot share the
test's event loop. `ThreadedFakeUpstream` runs one on a private loop in a daemon thread; its
scripting methods are called on that loop, and `requests()` returns a snapshot of what it
received (the exact JSON bodies).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from gateway.testing import FakeUpstream, ReceivedRequest

T = TypeVar("T")


class ThreadedFakeUpstream:
    """A started FakeUpstream served from a background thread; a context manager."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fake-upstream", daemon=True
        )
        self._thread.start()
        # strict: the real APIs' 400s for tool histories and fields a gateway gets wrong.
        self.fake: FakeUpstream = self._run_coro(FakeUpstream(strict=True).start())

    def _run_coro(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn()` on the fake's loop (its state is not thread-safe) and return its result."""
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed back to the caller
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=30)

    @property
    def url(self) -> str:
        return self.fake.url

    @property
    def openai_base_url(self) -> str:
        return self.fake.openai_base_url

    def requests(self) -> list[ReceivedRequest]:
        """Every request received so far, oldest first (a copy)."""
        return self.call(lambda: list(self.fake.requests))

    def reset(self) -> None:
        """Forget recorded requests and counts, and any scripted faults."""

        def reset() -> None:
            self.fake.heal()
            self.fake.reset_counts()

        self.call(reset)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run_coro(self.fake.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> ThreadedFakeUpstream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- no network ---------------------------------------------------------------------------

_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost", "::ffff:127.0.0.1"})


class NetworkBlocked(RuntimeError):
    """A client library tried to reach a host other than loopback."""


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Refuse name lookups and connections to anything but loopback, in this process.

    The client libraries have network habits of their own (price maps, telemetry, tokenizer
    downloads); under this guard any such attempt fails the test loudly instead of leaving.
    """
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def check(host: Any) -> None:
        if isinstance(host, bytes):
            host = host.decode()
        if host is not None and host not in _LOOPBACK:
            raise NetworkBlocked(f"a test tried to reach {host!r}: only loopback is allowed")

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        check(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple):
            check(address[0])
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple):
            check(address[0])
        return real_connect_ex(self, address)

    setattr(socket, "getaddrinfo", getaddrinfo)  # noqa: B010 - setattr keeps type checkers calm
    setattr(socket.socket, "connect", connect)  # noqa: B010
    setattr(socket.socket, "connect_ex", connect_ex)  # noqa: B010
    try:
        yield
    finally:
        setattr(socket, "getaddrinfo", real_getaddrinfo)  # noqa: B010
        setattr(socket.socket, "connect", real_connect)  # noqa: B010
        setattr(socket.socket, "connect_ex", real_connect_ex)  # noqa: B010
