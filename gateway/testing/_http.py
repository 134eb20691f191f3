"""A small HTTP/1.1 server on asyncio streams, with the byte-level control faults need.

It speaks just enough HTTP for API clients: keep-alive, Content-Length and chunked request
bodies, Content-Length responses, chunked (HTTP/1.1) or close-delimited (HTTP/1.0) streaming,
and it can abort a connection, stop mid-body or hold a request unanswered. A framework would
hide exactly those moves, and would cost more per request than this does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qsl

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
_READ_LIMIT = 1024 * 1024

_EXTRA_REASONS = {529: "Overloaded"}


class BadHttpRequest(Exception):
    """The bytes on the connection are not an HTTP/1.x request we can serve."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, str]
    version: str
    headers: dict[str, str]
    """Header names are lower-case; a repeated header keeps its last value."""
    body: bytes


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return _EXTRA_REASONS.get(status, "Unknown")


class HttpConnection:
    """One client connection: reads requests from it and writes responses to it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.keep_alive = True
        self.closed = False
        self._http11 = False

    async def read_request(self) -> HttpRequest | None:
        """The next request, or None when the client closed the connection between requests."""
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise BadHttpRequest("connection closed in the middle of a request head") from exc
            return None
        except asyncio.LimitOverrunError as exc:
            raise BadHttpRequest("request head too large", status=431) from exc
        if len(head) > MAX_HEAD_BYTES:
            raise BadHttpRequest("request head too large", status=431)
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError as exc:
            raise BadHttpRequest(f"malformed request line {lines[0][:100]!r}") from exc
        if not version.startswith("HTTP/1."):
            raise BadHttpRequest(f"unsupported protocol version {version!r}", status=505)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise BadHttpRequest(f"malformed header line {line[:100]!r}")
            headers[name.strip().lower()] = value.strip()
        path, _, query_string = target.partition("?")
        query = dict(parse_qsl(query_string)) if query_string else {}
        body = await self._read_body(headers)
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            self.keep_alive = connection == "keep-alive"
        else:
            self.keep_alive = connection != "close"
        self._http11 = version != "HTTP/1.0"
        return HttpRequest(method, path, query, version, headers, body)

    async def _read_body(self, headers: Mapping[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await self._read_chunked_body()
        length_text = headers.get("content-length")
        if not length_text:
            return b""
        try:
            length = int(length_text)
        except ValueError as exc:
            raise BadHttpRequest(f"content-length is {length_text!r}, not a number") from exc
        if not 0 <= length <= MAX_BODY_BYTES:
            raise BadHttpRequest(f"content-length {length} out of range", status=413)
        try:
            return await self._reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise BadHttpRequest("connection closed before the whole body arrived") from exc

    async def _read_chunked_body(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        try:
            while True:
                size_line = await self._reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # Skip trailers up to the blank line that ends the body.
                    while (await self._reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    return b"".join(parts)
                total += size
                if total > MAX_BODY_BYTES:
                    raise BadHttpRequest("chunked body too large", status=413)
                parts.append(await self._reader.readexactly(size))
                await self._reader.readexactly(2)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise BadHttpRequest("connection closed in the middle of a chunked body") from exc
        except ValueError as exc:
            raise BadHttpRequest("malformed chunk size in a chunked body") from exc

    def _head(self, status: int, headers: Mapping[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {reason_phrase(status)}"]
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        if not self.keep_alive:
            lines.append("connection: close")
        elif not self._http11:
            lines.append("connection: keep-alive")  # HTTP/1.0 closes unless told otherwise
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")

    async def send(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """A whole response with a Content-Length."""
        all_headers = {"content-type": content_type, "content-length": str(len(body))}
        if headers:
            all_headers.update(headers)
        self._writer.write(self._head(status, all_headers) + body)
        await self._writer.drain()

    async def send_truncated(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Promise the whole body in Content-Length, send half of it, then cut the connection."""
        all_headers = {"content-type": content_type, "content-length": str(len(body))}
        if headers:
            all_headers.update(headers)
        self._writer.write(self._head(status, all_headers) + body[: len(body) // 2])
        await self._writer.drain()
        await self.cut()

    async def start_stream(
        self,
        status: int,
        content_type: str,
        headers: Mapping[str, str] | None = None,
        *,
        first_chunk: bytes = b"",
    ) -> None:
        """Response headers for a body of unknown length: chunked, or close-delimited for 1.0."""
        all_headers = {"content-type": content_type, "cache-control": "no-cache"}
        if headers:
            all_headers.update(headers)
        if self._http11:
            all_headers["transfer-encoding"] = "chunked"
        else:
            self.keep_alive = False
        self._writer.write(self._head(status, all_headers) + self._frame(first_chunk))
        await self._writer.drain()

    def _frame(self, data: bytes) -> bytes:
        if not data or not self._http11:
            return data  # an empty chunk would end a chunked body
        return b"%x\r\n%s\r\n" % (len(data), data)

    async def send_chunk(self, data: bytes) -> None:
        if data:
            self._writer.write(self._frame(data))
            await self._writer.drain()

    async def end_stream(self) -> None:
        if self._http11:
            self._writer.write(b"0\r\n\r\n")
            await self._writer.drain()
        else:
            self.close()

    async def cut(self) -> None:
        """End the connection mid-body: what was written arrives, then EOF with no terminator."""
        # transport.abort() drops unsent bytes, and the client must see what came before the cut.
        transport = self._writer.transport
        while not self.closed and transport.get_write_buffer_size() and not transport.is_closing():
            await asyncio.sleep(0.001)
        self.abort()

    def reset(self) -> None:
        """Drop the connection with a TCP RST (SO_LINGER 0), as a crashed peer or proxy would."""
        sock = self._writer.get_extra_info("socket")
        if sock is not None and not self.closed:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once: the client sees a reset, not a clean end."""
        if not self.closed:
            self.closed = True
            self._writer.transport.abort()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._writer.close()

    async def wait_for_disconnect(self, timeout_s: float | None) -> bool:
        """Wait up to `timeout_s` (None: forever); True if the client hung up meanwhile.

        Reads and drops whatever the client sends; HTTP clients do not pipeline, so nothing
        of a next request can arrive while this one is unanswered.
        """

        async def until_eof() -> None:
            while await self._reader.read(65536):
                pass

        try:
            await asyncio.wait_for(until_eof(), timeout_s)
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        self.close()
        return True


Handler = Callable[[HttpRequest, HttpConnection], Awaitable[None]]
BadRequestHandler = Callable[[BadHttpRequest, HttpConnection], Awaitable[None]]


class HttpServer:
    """Serves `handler` on host:port; tracks connections so closing it is prompt and total."""

    def __init__(
        self,
        handler: Handler,
        *,
        on_bad_request: BadRequestHandler,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._handler = handler
        self._on_bad_request = on_bad_request
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], HttpConnection] = {}

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=_READ_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop listening, drop every connection and cancel every handler still running."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._connections)
        for task, connection in list(self._connections.items()):
            connection.abort()
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout_s)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connection = HttpConnection(reader, writer)
        self._connections[task] = connection
        try:
            while not connection.closed:
                try:
                    request = await connection.read_request()
                except BadHttpRequest as exc:
                    connection.keep_alive = False
                    await self._on_bad_request(exc, connection)
                    break
                if request is None:
                    break
                await self._handler(request, connection)
                if not connection.keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing left to answer
        except asyncio.CancelledError:
            # Only close() cancels these tasks, and it is waiting for exactly that. Letting the
            # cancellation propagate makes Python 3.11's stream callback log it as an error.
            pass
        finally:
            del self._connections[task]
            connection.close()
