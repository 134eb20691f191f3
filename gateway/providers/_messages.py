"""Converting OpenAI-style chat messages to the Anthropic and Ollama request shapes.

Anthropic (Messages API):
- every `system` message, wherever it appears, goes into the top-level `system` string
  (joined with blank lines, in order);
- consecutive turns of the same role are merged into one turn (their content blocks
  concatenated), because Anthropic requires user and assistant turns to alternate;
- a `tool` message becomes a user turn holding a `tool_result` block for its `tool_call_id`
  (and is merged with neighbouring user turns like any other); without a `tool_call_id` there
  is no tool_use to answer, so it becomes a text block `Tool result: ...`;
- an assistant message's OpenAI `tool_calls` become `tool_use` blocks;
- content parts: `text`/`input_text` pass through as text blocks, `image_url` becomes an
  `image` block (base64 for data: URLs, url otherwise), any other part is assumed to be a
  native Anthropic block and passes through untouched; empty and whitespace-only texts are
  dropped (Anthropic rejects both);
- inline images must be JPEG, PNG, GIF or WebP with data, remote ones http(s) URLs;
- a final assistant turn (a prefill, as when a stream resumes) loses its trailing whitespace,
  which Anthropic refuses there;
- a turn that is a single text block is sent as a plain string.

Anthropic has no JSON mode, so JSON mode appends `JSON_INSTRUCTION` to the system prompt.

Ollama (/api/chat) takes string contents: text parts are joined, `image_url` data: URLs go
into the message's `images` list (Ollama cannot fetch URLs), and other part types are refused.
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


def to_anthropic(messages: list[dict[str, Any]], *, json_mode: bool) -> tuple[str, list[dict]]:
    """(system, messages) for `messages.create`."""
    system_parts: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "system":
            text = content_text(message.get("content"))
            if text:
                system_parts.append(text)
            continue
        if role == "tool":
            role, blocks = "user", [_tool_result_block(message)]
        else:
            blocks = _anthropic_blocks(message.get("content"), i)
            if role == "assistant":
                blocks += _tool_use_blocks(message.get("tool_calls"), i)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if turns and turns[-1]["role"] == "assistant":
        _end_without_whitespace(turns)
    if not turns:
        raise InvalidRequestError(
            "messages has no user or assistant message with content; Anthropic needs at least "
            "one besides the system prompt: add {'role': 'user', 'content': '...'}"
        )
    for turn in turns:
        blocks = turn["content"]
        if len(blocks) == 1 and blocks[0].get("type") == "text":
            turn["content"] = blocks[0]["text"]
    if json_mode:
        system_parts.append(JSON_INSTRUCTION)
    return "\n\n".join(system_parts), turns


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


def _tool_result_block(message: Mapping[str, Any]) -> dict[str, Any]:
    text = content_text(message.get("content"))
    tool_call_id = message.get("tool_call_id")
    if tool_call_id:
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
    for i, message in enumerate(messages):
        out: dict[str, Any] = {"role": message["role"]}
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
                else:
                    raise InvalidRequestError(
                        f"{field}.type is {kind!r}; the ollama provider sends 'text' and "
                        "'image_url' parts only"
                    )
            out["content"] = "".join(texts)
            if images:
                out["images"] = images
        else:
            out["content"] = content or ""
        if message.get("tool_calls"):
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
