"""Converting OpenAI-style chat messages to the Anthropic and Ollama request shapes.

Anthropic (Messages API):
- every `system` (or `developer`) message, wherever it appears, goes into the top-level
  `system` string (joined with blank lines, in order);
- consecutive turns of the same role are merged into one turn (their content blocks
  concatenated), because Anthropic requires user and assistant turns to alternate;
- a `tool` message becomes a user turn holding a `tool_result` block for its `tool_call_id`
  (and is merged with neighbouring user turns like any other, its tool results first); without
  a `tool_call_id`, or with one that answers no tool call of the assistant turn before (as
  when a history was cut), there is no tool_use to answer, so it becomes a text block
  `Tool result: ...`;
- an assistant message's OpenAI `tool_calls` become `tool_use` blocks; one that no tool
  message answers before the next assistant turn is refused, as Anthropic (and OpenAI) would;
- content parts: `text`/`input_text` pass through as text blocks, `image_url` becomes an
  `image` block (base64 for data: URLs, url otherwise), a `file` part holding a PDF as a
  data: URL becomes a `document` block, a `refusal` part (an earlier answer's) becomes text;
  other files and `input_audio` are refused (Anthropic reads neither); any other part is
  assumed to be a native Anthropic block and passes through untouched; empty and
  whitespace-only texts are dropped (Anthropic rejects both);
- an assistant message without content whose `refusal` is set is sent as that text;
- a message's `name` is not sent: Anthropic's messages have no such field;
- inline images must be JPEG, PNG, GIF or WebP with data, remote ones http(s) URLs;
- a final assistant turn (a prefill, as when a stream resumes) loses its trailing whitespace,
  which Anthropic refuses there;
- a turn that is a single text block is sent as a plain string.

Anthropic has no JSON mode, so JSON mode appends `JSON_INSTRUCTION` to the system prompt.

Ollama (/api/chat) takes string contents: text parts are joined, `image_url` data: URLs go
into the message's `images` list (Ollama cannot fetch URLs), and other part types (`file`,
`input_audio`) are refused, saying what to send instead. A `developer` message is sent as
`system`; a `tool` message carries `tool_name`, the name of the earlier tool call it answers;
a message's `name` is not sent (Ollama has no such field).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import InvalidRequestError
from gateway.providers import _errors
from gateway.types import content_text

JSON_INSTRUCTION = (
    "Respond with exactly one JSON object and nothing else: no prose, no code fences."
)

_TEXT_PARTS = frozenset({"text", "input_text"})
_SYSTEM_ROLES = frozenset({"system", "developer"})
"""Roles whose text is instructions: OpenAI's `developer` is the newer name of `system`."""


def to_anthropic(messages: list[dict[str, Any]], *, json_mode: bool) -> tuple[str, list[dict]]:
    """(system, messages) for `messages.create`."""
    system_parts: list[str] = []
    turns: list[dict[str, Any]] = []
    calls = _OpenToolCalls()
    for i, message in enumerate(messages):
        role = message["role"]
        if role in _SYSTEM_ROLES:
            text = content_text(message.get("content"))
            if text:
                system_parts.append(text)
            continue
        uses: list[dict[str, Any]] = []
        if role == "tool":
            role, blocks = "user", [_tool_result_block(message, calls)]
        else:
            blocks = _anthropic_blocks(message.get("content"), i)
            if role == "assistant":
                uses = _tool_use_blocks(message.get("tool_calls"), i)
                blocks = (blocks or _refusal_blocks(message)) + uses
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            if role == "assistant":
                calls.close()  # a new assistant turn: the calls of the one before are answered
            turns.append({"role": role, "content": blocks})
        calls.open(uses, i)
    calls.close()
    if turns and turns[-1]["role"] == "assistant":
        _end_without_whitespace(turns)
    if not turns:
        raise InvalidRequestError(
            "messages has no user or assistant message with content; Anthropic needs at least "
            "one besides the system prompt: add {'role': 'user', 'content': '...'}"
        )
    for turn in turns:
        blocks = turn["content"]
        if turn["role"] == "user":
            # Anthropic wants a turn's tool results before anything else in it.
            blocks.sort(key=lambda block: block.get("type") != "tool_result")
        if len(blocks) == 1 and blocks[0].get("type") == "text":
            turn["content"] = blocks[0]["text"]
    if json_mode:
        system_parts.append(JSON_INSTRUCTION)
    return "\n\n".join(system_parts), turns


class _OpenToolCalls:
    """The tool calls of the latest assistant turn, which the turn after it must answer:
    Anthropic refuses a `tool_use` without a `tool_result` in the next turn, and a
    `tool_result` that answers no `tool_use` of the turn before."""

    def __init__(self) -> None:
        self._where: dict[str, str] = {}  # id -> the field that made the call
        self._answered: set[str] = set()

    def open(self, uses: list[dict[str, Any]], index: int) -> None:
        for j, block in enumerate(uses):
            if block["id"] in self._where:
                raise InvalidRequestError(
                    f"messages[{index}].tool_calls[{j}].id {block['id']!r} is given to two "
                    "tool calls of one turn; each call needs its own id"
                )
            self._where[block["id"]] = f"messages[{index}].tool_calls[{j}]"

    def answer(self, tool_call_id: str) -> bool:
        """Whether a tool message for `tool_call_id` answers an open call (once)."""
        if tool_call_id in self._where and tool_call_id not in self._answered:
            self._answered.add(tool_call_id)
            return True
        return False

    def close(self) -> None:
        """Refuse a call left unanswered, then start afresh."""
        missing = [where for id_, where in self._where.items() if id_ not in self._answered]
        if missing:
            raise InvalidRequestError(
                f"{missing[0]} has no tool message answering it; Anthropic needs every tool "
                "call's result right after the assistant turn that made it: add {'role': "
                "'tool', 'tool_call_id': '<its id>', 'content': '...'}"
            )
        self._where, self._answered = {}, set()


def _anthropic_blocks(content: Any, index: int) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            text = str(part.get("text", ""))
            if text.strip():
                blocks.append({"type": "text", "text": text})
        elif kind == "refusal":
            text = str(part.get("refusal") or "")
            if text.strip():
                blocks.append({"type": "text", "text": text})
        elif kind == "file":
            blocks.append(_document_block(part, f"messages[{index}].content[{j}]"))
        elif kind == "input_audio":
            raise InvalidRequestError(
                f"messages[{index}].content[{j}] is an input_audio part; Anthropic's models "
                "take no audio input: send a transcript as a text part, or route the request "
                "to a model that takes audio"
            )
        elif kind == "image_url":
            field = f"messages[{index}].content[{j}]"
            url = _image_url(part, field)
            media_type, data = _split_data_url(url)
            if data is not None:
                _check_inline_image(media_type, data, field, _ANTHROPIC_IMAGE_TYPES, "Anthropic")
                source = {"type": "base64", "media_type": media_type, "data": data}
            elif url.startswith(("https://", "http://")):
                source = {"type": "url", "url": url}
            else:
                raise InvalidRequestError(
                    f"{field}.image_url is neither an http(s) URL nor a data: URL; "
                    "pass https://... or data:image/png;base64,..."
                )
            blocks.append({"type": "image", "source": source})
        else:
            blocks.append(dict(part))
    return blocks


def _refusal_blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """An earlier answer that declined (OpenAI's `refusal`, content null) as its text."""
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal.strip():
        return [{"type": "text", "text": refusal}]
    return []


def _document_block(part: Mapping[str, Any], field: str) -> dict[str, Any]:
    """OpenAI's `file` part as an Anthropic `document` block: a PDF sent inline."""
    file = part.get("file")
    file = file if isinstance(file, Mapping) else {}
    data_url = file.get("file_data")
    if not isinstance(data_url, str) or not data_url:
        what = "a file_id (OpenAI's Files API)" if file.get("file_id") else "no file_data"
        raise InvalidRequestError(
            f"{field} is a file part with {what}; Anthropic reads files sent inline only: "
            "pass {'type': 'file', 'file': {'file_data': 'data:application/pdf;base64,...'}}"
        )
    media_type, data = _split_data_url(data_url)
    if data is None or media_type != "application/pdf" or not data:
        shown = f"a {media_type} data: URL" if data is not None else "not a data: URL"
        raise InvalidRequestError(
            f"{field}.file.file_data is {shown}; Anthropic takes PDF documents: pass "
            "data:application/pdf;base64,..., or send other documents' text as a text part"
        )
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": data},
    }


def _end_without_whitespace(turns: list[dict[str, Any]]) -> None:
    """Trim the final assistant turn's trailing whitespace; drop it if nothing is left."""
    blocks = turns[-1]["content"]
    while blocks and blocks[-1].get("type") == "text":
        text = blocks[-1]["text"].rstrip()
        if text:
            blocks[-1] = {**blocks[-1], "text": text}
            break
        blocks.pop()
    if not blocks:
        turns.pop()


def _tool_result_block(message: Mapping[str, Any], calls: _OpenToolCalls) -> dict[str, Any]:
    """A `tool_result` for the open tool call it answers; without one (no id, or an id no call
    of the turn before has), the result is kept as text, since Anthropic would refuse it."""
    text = content_text(message.get("content"))
    tool_call_id = message.get("tool_call_id")
    if tool_call_id and calls.answer(str(tool_call_id)):
        return {"type": "tool_result", "tool_use_id": str(tool_call_id), "content": text}
    return {"type": "text", "text": f"Tool result: {text}"}


def _tool_use_blocks(tool_calls: Any, index: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for j, call in enumerate(tool_calls or ()):
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": _tool_arguments(
                    function.get("arguments"),
                    f"messages[{index}].tool_calls[{j}].function.arguments",
                ),
            }
        )
    return blocks


def _tool_arguments(arguments: Any, field: str) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, Mapping):
        return dict(arguments)
    try:
        value = _errors.parse_untrusted_json(arguments)
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise InvalidRequestError(
            f'{field} must be a JSON object string (e.g. \'{{"city": "Paris"}}\'), '
            f"got {type(arguments).__name__}"
        )
    return value


def to_ollama(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` for Ollama's /api/chat: string contents, images split out."""
    converted: list[dict[str, Any]] = []
    tool_names: dict[str, str] = {}  # tool call id -> function name, for `tool_name`
    for i, message in enumerate(messages):
        role = message["role"]
        out: dict[str, Any] = {"role": "system" if role in _SYSTEM_ROLES else role}
        content = message.get("content")
        if isinstance(content, list):
            texts: list[str] = []
            images: list[str] = []
            for j, part in enumerate(content):
                field = f"messages[{i}].content[{j}]"
                kind = part.get("type")
                if kind in _TEXT_PARTS:
                    texts.append(str(part.get("text", "")))
                elif kind == "image_url":
                    media_type, data = _split_data_url(_image_url(part, field))
                    if data is None:
                        raise InvalidRequestError(
                            f"{field}.image_url is a URL; Ollama takes images inline only: "
                            "pass a data:image/...;base64,... URL"
                        )
                    _check_inline_image(media_type, data, field, None, "Ollama")
                    images.append(data)
                elif kind == "refusal":
                    texts.append(str(part.get("refusal") or ""))
                else:
                    raise InvalidRequestError(_ollama_part_refusal(field, kind))
            out["content"] = "".join(texts)
            if images:
                out["images"] = images
        else:
            out["content"] = content or ""
        if not out["content"] and role == "assistant" and isinstance(message.get("refusal"), str):
            out["content"] = message["refusal"]
        if role == "tool":
            name = tool_names.get(str(message.get("tool_call_id")))
            if name:
                out["tool_name"] = name
        if message.get("tool_calls"):
            for call in message["tool_calls"]:
                tool_names[str(call.get("id"))] = str((call.get("function") or {}).get("name"))
            out["tool_calls"] = [
                {
                    "function": {
                        "name": (call.get("function") or {}).get("name"),
                        "arguments": _tool_arguments(
                            (call.get("function") or {}).get("arguments"),
                            f"messages[{i}].tool_calls[{j}].function.arguments",
                        ),
                    }
                }
                for j, call in enumerate(message["tool_calls"])
            ]
        converted.append(out)
    return converted


def _ollama_part_refusal(field: str, kind: Any) -> str:
    if kind == "input_audio":
        return (
            f"{field} is an input_audio part; Ollama's chat API takes text and images only: "
            "send a transcript as a text part, or route the request to a model that takes audio"
        )
    if kind == "file":
        return (
            f"{field} is a file part; Ollama's chat API takes text and images only: send the "
            "document's text as a text part (or its pages as images)"
        )
    return (
        f"{field}.type is {kind!r}; the ollama provider sends 'text' and 'image_url' parts "
        "only: send text as {'type': 'text', 'text': '...'}"
    )


def _image_url(part: Mapping[str, Any], field: str) -> str:
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, Mapping) else value
    if not isinstance(url, str) or not url:
        raise InvalidRequestError(
            f"{field}.image_url must be a URL string or {{'url': '...'}}, got {value!r:.40}"
        )
    return url


_ANTHROPIC_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


def _check_inline_image(
    media_type: str, data: str, field: str, allowed: frozenset[str] | None, upstream: str
) -> None:
    """An inline image the upstream can decode: an image type it takes, and some data."""
    if not data:
        raise InvalidRequestError(f"{field}.image_url is a data: URL without data")
    fits = media_type in allowed if allowed is not None else media_type.startswith("image/")
    if not fits:
        kinds = ", ".join(sorted(allowed)) if allowed is not None else "an image/* type"
        raise InvalidRequestError(
            f"{field}.image_url is a {media_type} data: URL; {upstream} takes {kinds}"
        )


def _split_data_url(url: str) -> tuple[str, str | None]:
    """(media type, base64 data) of a `data:` URL; (``, None) for any other URL."""
    if not url.startswith("data:"):
        return "", None
    header, _, data = url[5:].partition(",")
    media_type = header.split(";", 1)[0] or "application/octet-stream"
    return media_type, data
