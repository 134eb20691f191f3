"""Cancel a request's work when its client disconnects, for no more than one small task.

A task group per request (a cancel scope, a spawned watcher, cancellation delivered through the
scope) costs several times more, on every request, for a rare event. Here the request's own task
does the work, and is cancelled when the client goes; it takes that cancellation back
(`Task.uncancel`) and raises `ClientGone` instead. The work sees a plain `CancelledError` at
whatever it was awaiting (the upstream call, a stream's next delta), exactly as a cancelled
task group would deliver it; a cancellation from elsewhere still propagates as itself.

Under `gateway serve` the connection itself says when it is lost (`CONNECTION_LOSS`, set by its
`ConnectionGuard` for each request): nothing more is made per request. An app run by another
server has no such notice: one watcher task per request then waits for the client's
`http.disconnect`.

The same block ends its work when the server's shutdown grace runs out (`SHUTDOWN`): the task
is cancelled the same way and the block raises `ServerShutdown`, so that the request can say so
(an error event, a 503) instead of being cut by the server's own cancellation of its tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextvars import ContextVar
from types import TracebackType

from starlette.types import Receive

log = logging.getLogger("gateway.server")


class ClientGone(Exception):
    """The client disconnected before its answer was complete; its work was cancelled."""


class ServerShutdown(Exception):
    """The server's shutdown grace ran out before the answer was complete; its work was
    cancelled."""


class ShutdownClock:
    """The process's shutdown: `begin` starts the grace period, at whose end every request
    still in a `CancelOnDisconnect` block is ended (`expired` is then true).

    One per process (`SHUTDOWN`), as the signal that starts it is: `serve`'s connections begin
    it when the server starts shutting down. An app run by another server never sees it begin.
    """

    __slots__ = ("_timer", "_watchers", "expired")

    def __init__(self) -> None:
        self.expired = False
        self._timer: asyncio.TimerHandle | None = None
        self._watchers: set[Callable[[], None]] = set()

    @property
    def begun(self) -> bool:
        return self._timer is not None or self.expired

    def begin(self, grace_s: float) -> None:
        """Start the grace period (once; later calls change nothing)."""
        if self.begun:
            return
        self._timer = asyncio.get_running_loop().call_later(grace_s, self.expire)

    def reset(self) -> None:
        """Back to before `begin`: for a process that serves again after a shutdown."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self.expired = None, False

    def expire(self) -> None:
        if self.expired:
            return
        self.expired = True
        if self._watchers:
            log.warning(
                "shutdown grace ran out: ending %d request(s) in flight", len(self._watchers)
            )
        for watcher in list(self._watchers):
            watcher()

    def watch(self, callback: Callable[[], None]) -> None:
        self._watchers.add(callback)

    def unwatch(self, callback: Callable[[], None]) -> None:
        self._watchers.discard(callback)


SHUTDOWN = ShutdownClock()


class LossNotice:
    """One connection's loss, told to the request waiting on it (one at a time: HTTP/1.1
    serves a connection's requests one after another), or, once it is lost, to any that
    starts waiting later."""

    __slots__ = ("is_lost", "waiter")

    def __init__(self) -> None:
        self.waiter: Callable[[], None] | None = None
        self.is_lost = False

    def lost(self) -> None:
        self.is_lost = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter()


CONNECTION_LOSS: ContextVar[LossNotice | None] = ContextVar("gateway_connection_loss", default=None)
"""The notice of the connection the current request came on, where the server gives one."""


class CancelOnDisconnect:
    """`with CancelOnDisconnect(receive): ...` runs the block in the current task; if the
    client disconnects meanwhile, the task is cancelled and the block ends in `ClientGone`; if
    the shutdown grace runs out, in `ServerShutdown`, unless the work took the cancellation and
    ended by itself (as a stream's source does, with its own ending).

    Only for when the request body has been read: the next ASGI message can then only be the
    disconnect. Leave the block before the response's last message is sent (after it, ASGI
    servers report a disconnect).
    """

    __slots__ = ("_done", "_gone", "_notice", "_receive", "_shut", "_task", "_watcher")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._gone = self._done = self._shut = False

    def __enter__(self) -> CancelOnDisconnect:
        task = asyncio.current_task()
        assert task is not None, "CancelOnDisconnect needs a running task"
        self._task = task
        self._notice = CONNECTION_LOSS.get()
        self._watcher: asyncio.Future[None] | None = None
        if self._notice is not None:
            self._notice.waiter = self._on_lost
            if self._notice.is_lost:  # gone already: end at the block's first wait
                self._notice.lost()
        else:
            self._watcher = asyncio.ensure_future(_disconnect(self._receive))
            self._watcher.add_done_callback(self._on_disconnect)
        SHUTDOWN.watch(self._on_shutdown)
        if SHUTDOWN.expired:  # no grace left: end at the block's first wait
            self._on_shutdown()
        return self

    def _on_shutdown(self) -> None:
        if self._done or self._gone or self._shut:
            return
        self._shut = True
        self._task.cancel()

    def _on_disconnect(self, watcher: asyncio.Future[None]) -> None:
        if watcher.cancelled() or watcher.exception() is not None:
            return
        self._on_lost()

    def _on_lost(self) -> None:
        if self._done or self._gone:
            return
        self._gone = True
        self._task.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._done = True
        if self._watcher is not None:
            self._watcher.cancel()
        elif self._notice is not None and self._notice.waiter == self._on_lost:
            self._notice.waiter = None
        SHUTDOWN.unwatch(self._on_shutdown)
        if self._gone:  # our own cancellation (delivered, or left unused by finished work)
            self._task.uncancel()
            raise ClientGone from None
        if self._shut:
            self._task.uncancel()
            if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
                raise ServerShutdown from None


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
