"""Answer one parsed API request on its connection, healthily or with its fault applied."""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from collections.abc import Iterator
from typing import Any

from gateway.testing._faults import OVERSIZED_KINDS, STATUS_SHORTCUTS, Fault
from gateway.testing._http import HttpConnection
from gateway.testing._plan import plan
from gateway.testing._protocols import Answer, Call, Choice, ToolCall, Wire, new_id, now
from gateway.testing._replies import ReplySpec, fake_usage, split_words

# Faults that change how a stream's body is written, and stop its content after N chunks.
_TRUNCATING = frozenset({"cut_stream", "midstream_error", "stall"})

# An oversized answer's text stands in its body as this mark, replaced by "x"s written a piece
# at a time; a compressed stream repeats events of _EVENT_TEXT bytes of text.
_MARK = "@@fake-upstream-oversized-text@@"
_PIECE = 1 << 20
_EVENT_TEXT = 1 << 16


DEEP_JSON = b'{"a":' * 20_000 + b"1" + b"}" * 20_000
"""Valid JSON that `json.loads` cannot parse within Python's recursion limit (`deep_json`)."""


async def respond(
    conn: HttpConnection, wire: Wire, call: Call, fault: Fault | None, spec: ReplySpec
) -> None:
    kind = fault.kind if fault is not None else "ok"
    if await _failed_at_once(conn, wire, fault, call.model):
        return
    hold_first = kind in {"hang", "slow_first_byte"} or (kind == "stall" and not call.stream)
    if hold_first:
        assert fault is not None
        if await conn.wait_for_disconnect(fault.seconds):
            return
    filtered = kind == "content_filter" and wire.name != "ollama"  # Ollama has no filter
    answer = make_answer(call, spec, filtered=filtered)
    if spec.latency_s:
        await asyncio.sleep(spec.latency_s)
    headers = response_headers(wire)
    if kind in OVERSIZED_KINDS:
        assert fault is not None and fault.size is not None
        await _send_oversized(conn, wire, call, answer, fault.size, kind == "gzip_bomb", headers)
    elif kind == "midstream_error" and not call.stream:
        # A whole-body request cannot fail "mid-stream": it gets the matching status.
        assert fault is not None and fault.error_kind is not None
        status_fault = Fault(fault.error_kind, code=STATUS_SHORTCUTS[fault.error_kind])
        await send_error(conn, wire, wire.error_status(status_fault), model=call.model)
    elif call.stream:
        await _stream(conn, wire, call, answer, spec, fault, headers)
    elif kind == "malformed_json":
        await conn.send(200, wire.malformed_body(call, answer), headers=headers)
    elif kind == "deep_json":
        await conn.send(200, DEEP_JSON, headers=headers)
    elif kind == "cut_stream":
        await conn.send_truncated(200, wire.encode(wire.completion(call, answer)), headers=headers)
    else:
        await conn.send(200, wire.encode(wire.completion(call, answer)), headers=headers)


async def _failed_at_once(
    conn: HttpConnection, wire: Wire, fault: Fault | None, model: str
) -> bool:
    """Apply a fault that answers before any content (an error status, a reset): whether
    it did."""
    if fault is None:
        return False
    if fault.code is not None:
        await send_error(
            conn,
            wire,
            wire.error_status(fault),
            fault_kind=fault.kind,
            message=fault.message,
            model=model,
            retry_after=fault.retry_after,
        )
        return True
    if fault.kind == "reset":
        conn.reset()
        return True
    return False


async def respond_embedding(
    conn: HttpConnection, wire: Wire, model: str, fault: Fault | None, answer: bytes
) -> None:
    """An embedding request's answer (`answer`, the healthy body), or its fault: an error
    status, a reset, a hang or slow start, a malformed, too deep or cut body. Faults that
    only mean something to chat (content filter, streams, oversized text) answer healthily."""
    kind = fault.kind if fault is not None else "ok"
    if await _failed_at_once(conn, wire, fault, model):
        return
    if kind in {"hang", "slow_first_byte", "stall"}:
        assert fault is not None
        if await conn.wait_for_disconnect(fault.seconds):
            return
    headers = response_headers(wire)
    if kind == "malformed_json":
        await conn.send(200, answer[: len(answer) // 2], headers=headers)
    elif kind == "deep_json":
        await conn.send(200, DEEP_JSON, headers=headers)
    elif kind == "cut_stream":
        await conn.send_truncated(200, answer, headers=headers)
    else:
        await conn.send(200, answer, headers=headers)


async def _stream(
    conn: HttpConnection,
    wire: Wire,
    call: Call,
    answer: Answer,
    spec: ReplySpec,
    fault: Fault | None,
    headers: dict[str, str],
) -> None:
    kind = fault.kind if fault is not None else "ok"
    chunks, rest = wire.chunks(call, answer), []
    if kind in _TRUNCATING:
        assert fault is not None and fault.after_chunks is not None
        chunks, rest = chunks[: fault.after_chunks], chunks[fault.after_chunks :]
    elif kind in {"malformed_json", "deep_json"}:
        chunks = []
    opening = b"".join(wire.stream_open(call, answer))
    deltas = [wire.stream_chunk(call, answer, chunk) for chunk in chunks]
    if kind == "malformed_json":
        closing = wire.malformed_event(call, answer)
    elif kind == "deep_json":
        closing = _deep_event(wire)
    elif kind == "midstream_error":
        assert fault is not None and fault.error_kind is not None
        closing = wire.stream_error(call, fault.error_kind)
    elif kind in {"cut_stream", "stall"}:
        closing = b""
    else:
        closing = b"".join(wire.stream_close(call, answer))

    if spec.chunk_delay_s:
        await conn.start_stream(200, wire.stream_content_type, headers, first_chunk=opening)
        for delta in deltas:
            await asyncio.sleep(spec.chunk_delay_s)
            await conn.send_chunk(delta)
        await conn.send_chunk(closing)
    else:
        # No pacing asked for: one write is what keeps the server cheap in benchmarks.
        body = opening + b"".join(deltas) + closing
        await conn.start_stream(200, wire.stream_content_type, headers, first_chunk=body)

    if kind == "cut_stream":
        await conn.cut()
        return
    if kind == "stall":
        assert fault is not None
        if await conn.wait_for_disconnect(fault.seconds):
            return
        remainder = [wire.stream_chunk(call, answer, chunk) for chunk in rest]
        await conn.send_chunk(b"".join([*remainder, *wire.stream_close(call, answer)]))
    await conn.end_stream()


async def _send_oversized(
    conn: HttpConnection,
    wire: Wire,
    call: Call,
    answer: Answer,
    size: int,
    gzipped: bool,
    headers: dict[str, str],
) -> None:
    if call.stream and gzipped:
        parts = _repeated_events(wire, call, answer, size)
    else:
        marked = dataclasses.replace(answer, text=_MARK, pieces=[_MARK])
        if call.stream:
            body = b"".join(
                [
                    *wire.stream_open(call, marked),
                    wire.stream_delta(call, marked, _MARK),
                    *wire.stream_close(call, marked),
                ]
            )
        else:
            body = wire.encode(wire.completion(call, marked))
        prefix, _, suffix = body.partition(_MARK.encode())
        parts = _around(prefix, b"x", size, suffix)
    if gzipped:
        headers["content-encoding"] = "gzip"
        parts = _gzipped(parts)
    content_type = wire.stream_content_type if call.stream else "application/json"
    # Chunked, so the client cannot refuse it by its Content-Length and must read to know.
    await conn.start_stream(200, content_type, headers)
    for part in parts:
        await conn.send_chunk(part)  # raises ConnectionError once the client has had enough
    await conn.end_stream()


def _around(prefix: bytes, filler: bytes, size: int, suffix: bytes) -> Iterator[bytes]:
    yield prefix
    piece = filler * (_PIECE // len(filler))
    whole, rest = divmod(size, len(piece))
    for _ in range(whole):
        yield piece
    yield filler * (rest // len(filler))
    yield suffix


def _repeated_events(wire: Wire, call: Call, answer: Answer, size: int) -> Iterator[bytes]:
    yield b"".join(wire.stream_open(call, answer))
    event = wire.stream_delta(call, answer, "x" * _EVENT_TEXT)
    for _ in range(max(1, size // _EVENT_TEXT)):
        yield event
    yield b"".join(wire.stream_close(call, answer))


def _gzipped(parts: Iterator[bytes]) -> Iterator[bytes]:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip member
    for part in parts:
        out = compressor.compress(part)
        if out:
            yield out
    yield compressor.flush()


async def send_error(
    conn: HttpConnection,
    wire: Wire,
    status: int,
    *,
    fault_kind: str = "status",
    message: str | None = None,
    model: str = "",
    param: str | None = None,
    retry_after: float | None = None,
) -> None:
    body = wire.error_body(status, fault_kind=fault_kind, message=message, model=model, param=param)
    headers = response_headers(wire)
    if retry_after is not None:
        headers["retry-after"] = _format_seconds(retry_after)
    await conn.send(status, wire.encode(body), headers=headers)


def _deep_event(wire: Wire) -> bytes:
    """`DEEP_JSON` framed as the wire's next stream event: an NDJSON line for Ollama, an SSE
    event for the others, named as a content delta for Anthropic (whose SDK skips unnamed
    events, which would test nothing)."""
    if wire.name == "ollama":
        return DEEP_JSON + b"\n"
    named = b"event: content_block_delta\n" if wire.name == "anthropic" else b""
    return named + b"data: " + DEEP_JSON + b"\n\n"


def make_answer(call: Call, spec: ReplySpec, *, filtered: bool) -> Answer:
    """The answer `_plan` decides on, with ids in the wire's style and its usage: output tokens
    are the words of every choice's text and of each tool call's name and arguments."""
    decided = plan(call, spec)
    text = "" if filtered else decided.text
    prefix = {"anthropic": "msg_", "ollama": ""}.get(call.protocol, "chatcmpl-")
    calls = () if filtered else decided.calls
    tool_calls = _tool_calls(call.protocol, calls)
    more = tuple(
        Choice(_nth_text(text, i, json_mode=call.json_mode), _tool_calls(call.protocol, calls))
        for i in range(1, call.n)
    )
    said = [text, *(c.text for c in more)]
    said += [f"{t.name} {t.arguments_json}" for t in tool_calls]
    said += [f"{t.name} {t.arguments_json}" for c in more for t in c.tool_calls]
    return Answer(
        id=new_id(prefix),
        created=now(),
        model=call.model,
        text=text,
        pieces=split_words(text),
        usage=(
            spec.usage
            if spec.usage is not None
            else fake_usage(call.messages, " ".join(s for s in said if s), spec.cached_input_tokens)
        ),
        filtered=filtered,
        tool_calls=tool_calls,
        refused=decided.refused and not filtered,
        more_choices=more,
    )


def _nth_text(text: str, index: int, *, json_mode: bool) -> str:
    """Choice `index`'s text: marked so each choice differs, except JSON, which must parse."""
    if not text or json_mode:
        return text
    return f"{text} (choice {index + 1})"


def _tool_calls(
    protocol: str, calls: tuple[tuple[str, dict[str, Any]], ...]
) -> tuple[ToolCall, ...]:
    prefix = {"anthropic": "toolu_", "ollama": None}.get(protocol, "call_")
    return tuple(
        ToolCall(new_id(prefix) if prefix is not None else "", name, arguments)
        for name, arguments in calls
    )


def response_headers(wire: Wire) -> dict[str, str]:
    request_id = new_id("req_")
    if wire.name == "anthropic":
        return {"request-id": request_id}
    return {"x-request-id": request_id}


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"
