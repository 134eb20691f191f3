"""Cancel a request's work when its client disconnects, for the price of one small task.

A task group per request (a cancel scope, a spawned watcher, cancellation delivered through the
scope) costs several times more, on every request, for a rare event. Here the request's own task
does the work; one watcher task waits for the client's `http.disconnect` and, when it comes,
cancels the request's task, which takes that cancellation back (`Task.uncancel`) and raises
`ClientGone` instead. The work sees a plain `CancelledError` at whatever it was awaiting (the
upstream call, a stream's next delta), exactly as a cancelled task group would deliver it; a
cancellation from elsewhere (shutdown) still propagates as itself.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from starlette.types import Receive


class ClientGone(Exception):
    """The client disconnected before its answer was complete; its work was cancelled."""


class CancelOnDisconnect:
    """`with CancelOnDisconnect(receive): ...` runs the block in the current task; if the
    client disconnects meanwhile, the task is cancelled and the block ends in `ClientGone`.

    Only for when the request body has been read: the next ASGI message can then only be the
    disconnect. Leave the block before the response's last message is sent (after it, ASGI
    servers report a disconnect).
    """

    __slots__ = ("_done", "_gone", "_receive", "_task", "_watcher")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._gone = self._done = False

    def __enter__(self) -> CancelOnDisconnect:
        task = asyncio.current_task()
        assert task is not None, "CancelOnDisconnect needs a running task"
        self._task = task
        self._watcher = asyncio.ensure_future(_disconnect(self._receive))
        self._watcher.add_done_callback(self._on_disconnect)
        return self

    def _on_disconnect(self, watcher: asyncio.Future[None]) -> None:
        if self._done or watcher.cancelled() or watcher.exception() is not None:
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
        self._watcher.cancel()
        if self._gone:  # our own cancellation (delivered, or left unused by finished work)
            self._task.uncancel()
            raise ClientGone from None


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
