"""What a client can make the server's access log say, without a key.

The access line escapes control characters in every field: a path, a header or a forwarded
address holding a line break (CR, LF, NEL, U+2028/2029) or any other control character
makes exactly one access line, with the characters shown escaped, never a second line that
could pass for a real one.

A real `python -m gateway.server` on 127.0.0.1, sent raw HTTP over a socket (no client library
would send such requests), under each HTTP parser uvicorn may use.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from server_harness import ServerProcess

from gateway.errors import GatewayError
from gateway.server import ServerSettings, create_app
from gateway.server._middleware import escaped

CLIENT_KEY = "gw-logs-client-key-3c9e1b7a"

POLICY = """\
version: 1
defaults:
  timeout_s: 2
  retry: {attempts: 1}
providers:
  # Never answers: port 9 on loopback refuses the connection, so a chat request ends in 502.
  mini: {type: openai_http, model: m-1, base_url: "http://127.0.0.1:9/v1", api_key: "k"}
tasks:
  default: {chain: [mini]}
"""

FORGED = 'INFO:     127.0.0.1 "POST /api/v1/policy/reload" 200 0.9ms'
"""What an attacker would like a line of the log to say."""

ACCESS_LINE = re.compile(
    r'INFO: +(?P<client>\S+) "(?P<method>[A-Z]+) (?P<path>(?:[^"\\\s]|\\.)*)" '
    r"(?P<status>\d{3}) [\d.]+ms(?P<rest>(?: [a-z_]+=\S+)*)"
)
"""A whole access line: no field holds a space, and `"` and `\\` appear only escaped."""

T = TypeVar("T")


def eventually(check: Callable[[], T | None], timeout_s: float = 10.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s:g}s")
        time.sleep(0.05)


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("server")
    policy = root / "routing.yaml"
    policy.write_text(POLICY)
    env = {"GATEWAY_API_KEYS": CLIENT_KEY, "GATEWAY_POLICY_WATCH_S": "0"}
    if request.param == "h11":
        # uvicorn serves with h11 (and asyncio's loop) where httptools does not import.
        hidden = root / "hidden"
        hidden.mkdir()
        for name in ("uvloop", "httptools"):
            (hidden / f"{name}.py").write_text(f"raise ImportError('{name} hidden')\n")
        env["PYTHONPATH"] = os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])
    with ServerProcess(policy, log_path=root / "server.log", env=env) as process:
        process.wait_ready()
        assert f"HTTP parser: {request.param}" in process.log()
        yield process


def raw_request(server: ServerProcess, head: bytes, body: bytes = b"") -> bytes:
    """Send `head` (request line and headers, without the blank line) and `body`; return the
    status line the server answers (b"" if it closes without answering)."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(head + b"\r\nconnection: close\r\n\r\n" + body)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def log_lines(server: ServerProcess) -> list[str]:
    # splitlines() breaks at every line boundary a log viewer might: CR, LF, VT, FF, FS, GS,
    # RS, NEL, U+2028 and U+2029.
    return server.log().splitlines()


def access_line_with(server: ServerProcess, marker: str) -> str:
    """The one line of the log that holds `marker`, once it is written."""
    lines = eventually(lambda: [line for line in log_lines(server) if marker in line])
    time.sleep(0.1)  # a second line with the marker would be written at the same time
    lines = [line for line in log_lines(server) if marker in line]
    assert len(lines) == 1, lines
    return lines[0]


def assert_nothing_forged(server: ServerProcess) -> None:
    for line in log_lines(server):
        match = ACCESS_LINE.fullmatch(line)
        if "/api/v1/policy/reload" in line:
            # Only ever inside the path of the request that carried it.
            assert match is not None and match["method"] == "GET", line
        if line.startswith("INFO: ") and '"' in line:
            assert match is not None, f"not a whole access line: {line!r}"


# --- the access line ------------------------------------------------------------------------

SENT_FORGED = FORGED.replace(" ", "%20").replace('"', "%22")
SHOWN_FORGED = FORGED.replace(" ", "\\x20").replace('"', '\\"')

# The path as sent (percent-encoded), and as the access line must show it.
PATHS = [
    pytest.param(f"%0a{SENT_FORGED}%0a", f"\\n{SHOWN_FORGED}\\n", id="LF"),
    pytest.param(f"%0d{SENT_FORGED}%0d", f"\\r{SHOWN_FORGED}\\r", id="CR"),
    pytest.param(f"%0d%0a{SENT_FORGED}%0d%0a", f"\\r\\n{SHOWN_FORGED}\\r\\n", id="CRLF"),
    pytest.param(f"%c2%85{SENT_FORGED}", f"\\x85{SHOWN_FORGED}", id="NEL"),
    pytest.param(f"%e2%80%a8{SENT_FORGED}%e2%80%a9x", f"\\u2028{SHOWN_FORGED}\\u2029x", id="LS-PS"),
    pytest.param("%0b%0c%1c%1d%1e", "\\x0b\\x0c\\x1c\\x1d\\x1e", id="VT-FF-FS-GS-RS"),
    pytest.param("%00%07%08%09%7f", "\\x00\\x07\\x08\\t\\x7f", id="C0-DEL"),
    pytest.param("%1b[2K%1b[1A%0d", "\\x1b[2K\\x1b[1A\\r", id="terminal-escapes"),
    pytest.param("%c2%80%c2%9f", "\\x80\\x9f", id="C1"),
    pytest.param("%e2%80%aeevil", "\\u202eevil", id="bidi-override"),
    pytest.param(
        "%22%20200%200.1ms%20task=x%5Cn",
        '\\"\\x20200\\x200.1ms\\x20task=x\\\\n',
        id="quote-space-backslash",
    ),
    pytest.param("caf%c3%a9/%e6%97%a5%e6%9c%ac", "café/日本", id="printable-unicode-as-is"),
]


@pytest.mark.parametrize(("sent", "shown"), PATHS)
def test_a_path_with_control_characters_makes_one_escaped_line(
    server: ServerProcess, sent: str, shown: str
) -> None:
    marker = f"probe-{time.monotonic_ns()}"
    status = raw_request(server, f"GET /{marker}{sent} HTTP/1.1\r\nhost: gw".encode())
    assert status == b"HTTP/1.1 404 Not Found"
    line = access_line_with(server, marker)
    match = ACCESS_LINE.fullmatch(line)
    assert match is not None, line
    assert (match["client"], match["method"], match["status"]) == ("127.0.0.1", "GET", "404")
    assert match["path"] == f"/{marker}{shown}"
    assert_nothing_forged(server)


def test_the_query_string_is_never_written(server: ServerProcess) -> None:
    marker = f"probe-{time.monotonic_ns()}"
    query = "x=%0a" + FORGED.replace(" ", "%20").replace('"', "%22")
    status = raw_request(server, f"GET /{marker}?{query} HTTP/1.1\r\nhost: gw".encode())
    assert status == b"HTTP/1.1 404 Not Found"
    match = ACCESS_LINE.fullmatch(access_line_with(server, marker))
    assert match is not None and match["path"] == f"/{marker}"
    assert_nothing_forged(server)


# Header values with bytes a parser may refuse or pass on. Whatever reaches the app, the log
# has one access line per request, and the header's text is never in it.
HEADER_VALUES = [
    pytest.param(b"chat\r" + FORGED.encode(), id="bare-CR"),
    pytest.param(b"chat\x0b" + FORGED.encode(), id="VT"),
    pytest.param(b"chat\x1b[2K\x85" + FORGED.encode(), id="ESC-NEL"),
    pytest.param(b"chat\r\n " + FORGED.encode(), id="obs-fold"),
]


def chat_lines(server: ServerProcess) -> list[str]:
    return [line for line in log_lines(server) if '"POST /v1/chat/completions"' in line]


@pytest.mark.parametrize("value", HEADER_VALUES)
def test_a_task_header_with_control_characters_never_reaches_the_log(
    server: ServerProcess, value: bytes
) -> None:
    before = len(chat_lines(server))
    body = b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}]}'
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n"
        + f"authorization: Bearer {CLIENT_KEY}\r\n".encode()
        + b"content-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n".encode()
        + b"x-gateway-task: "
        + value
    )
    status = raw_request(server, head, body)
    if status.startswith(b"HTTP/1.1 400"):
        # The parser refused the request before the app saw it: no access line at all.
        time.sleep(0.3)
        assert len(chat_lines(server)) == before
    else:
        # The app routed it: the task is the policy's name for it (`default`), never the
        # header's text; the provider is unreachable, so 502.
        assert status == b"HTTP/1.1 502 Bad Gateway"
        lines = eventually(lambda: chat_lines(server)[before:])
        time.sleep(0.1)
        assert len(chat_lines(server)) == before + 1, lines
        match = ACCESS_LINE.fullmatch(lines[0])
        assert match is not None, lines[0]
        assert " task=default " in match["rest"] + " "
    assert FORGED not in server.log()
    assert_nothing_forged(server)


@pytest.mark.parametrize(
    ("forwarded", "shown"),
    [
        # Bytes 0x80-0xff in a header are decoded as latin-1: 0x85 is NEL, a line break.
        pytest.param(b"10.1.2.3\x85" + FORGED.encode(), "10.1.2.3\\x85" + SHOWN_FORGED, id="NEL"),
        # 0x9b is CSI, which starts a terminal escape sequence as ESC [ does.
        pytest.param(b"10.1.2.3\x9b2K", "10.1.2.3\\x9b2K", id="CSI"),
    ],
)
def test_a_forwarded_client_address_is_escaped(
    server: ServerProcess, forwarded: bytes, shown: str
) -> None:
    # uvicorn takes the client's address from X-Forwarded-For when the peer is a trusted proxy
    # (by default 127.0.0.1, as here), so the address field holds what the header says. Both
    # parsers pass these bytes on (they refuse C0 controls in a header).
    marker = f"probe-{time.monotonic_ns()}"
    head = f"GET /{marker} HTTP/1.1\r\nhost: gw\r\n".encode() + b"x-forwarded-for: " + forwarded
    assert raw_request(server, head) == b"HTTP/1.1 404 Not Found"
    match = ACCESS_LINE.fullmatch(access_line_with(server, marker))
    assert match is not None
    assert (match["client"], match["path"]) == (shown, f"/{marker}")
    assert_nothing_forged(server)


def test_every_field_goes_through_one_escape() -> None:
    assert escaped("/v1/chat/completions") == "/v1/chat/completions"
    assert escaped('a\nb\rc\td\\e"f g') == 'a\\nb\\rc\\td\\\\e\\"f\\x20g'
    assert escaped("\x00\x1f\x7f\x80\x85\x9f") == "\\x00\\x1f\\x7f\\x80\\x85\\x9f"
    assert escaped("\u2028\u2029\u200e\u202e\u2066") == "\\u2028\\u2029\\u200e\\u202e\\u2066"
    assert escaped("café/日本/✓") == "café/日本/✓"
    # Escaped text has no line boundary left in it.
    every = "".join(map(chr, range(0x3000)))
    assert len(escaped(every).splitlines()) == 1


# --- the error log ----------------------------------------------------------------------------


async def test_an_unexpected_error_logs_the_path_escaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The two other lines that name a request's path: an unexpected error in a route, and a
    # GatewayError the server has no answer for. Routes that fail so are added for the test.
    policy = tmp_path / "routing.yaml"
    policy.write_text(POLICY)
    app = create_app(policy, settings=ServerSettings(api_keys=(CLIENT_KEY,), policy_watch_s=None))

    async def unexpected() -> None:
        raise RuntimeError("a bug")

    async def unanswered() -> None:
        raise GatewayError("no answer for this one")

    app.add_api_route("/bug/{rest:path}", unexpected)
    app.add_api_route("/gateway-bug/{rest:path}", unanswered)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        for route in ("bug", "gateway-bug"):
            with caplog.at_level(logging.ERROR, logger="gateway.server"):
                # Not LF: a route's path parameter matches any character but LF.
                response = await client.get(f"/{route}/x%e2%80%a8{SENT_FORGED}%c2%85y")
            assert response.status_code == 500
            (record,) = [r for r in caplog.records if r.name == "gateway.server"]
            message = record.getMessage()
            assert len(message.splitlines()) == 1, message
            assert f"/{route}/x\\u2028" in message
            caplog.clear()
