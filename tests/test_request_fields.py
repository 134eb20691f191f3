"""Every Chat Completions field has one answer per provider type, and docs/server.md shows them.

The codecs' `REQUEST_FIELDS` tables are where each field's handling is written down, next to
the code that does it; the table in docs/server.md is built from them and checked here, so the
documentation cannot drift from what the providers do.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.providers._codec_anthropic import REQUEST_FIELDS as ANTHROPIC
from gateway.providers._codec_ollama import REQUEST_FIELDS as OLLAMA
from gateway.providers._codec_openai import REQUEST_FIELDS as OPENAI
from gateway.providers._litellm import REQUEST_FIELDS as LITELLM
from gateway.request import OPENAI_FIELDS
from gateway.server._openai_compat import ChatCompletionRequest

DOC = Path(__file__).resolve().parents[1] / "docs" / "server.md"
START, END = "<!-- request-fields: start -->", "<!-- request-fields: end -->"
COLUMNS = {
    "openai, azure_openai": OPENAI,
    "anthropic": ANTHROPIC,
    "ollama": OLLAMA,
    "litellm": LITELLM,
}
SERVER_OWN = {"model", "messages", "temperature", "max_tokens", "stream", "stream_options"}
"""Fields every provider takes alike (the task, the conversation, sampling, the stream)."""


def field_table() -> str:
    lines = [
        "| Field | " + " | ".join(f"`{name}`" for name in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for field in OPENAI_FIELDS:
        cells = [table[field].replace("|", "\\|") for table in COLUMNS.values()]
        lines.append(f"| `{field}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@pytest.mark.parametrize("name", list(COLUMNS))
def test_each_provider_type_answers_every_field(name: str) -> None:
    table = COLUMNS[name]
    assert set(table) == set(OPENAI_FIELDS)
    assert all(isinstance(text, str) and text for text in table.values())


def test_the_server_accepts_exactly_the_fields_the_tables_cover() -> None:
    assert set(ChatCompletionRequest.model_fields) - SERVER_OWN == set(OPENAI_FIELDS)


def test_docs_server_md_shows_the_tables_as_they_are() -> None:
    text = DOC.read_text(encoding="utf-8")
    found = re.search(re.escape(START) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    assert found, f"docs/server.md has no {START} ... {END} block"
    expected = field_table()
    assert found.group(1).strip() == expected, (
        "docs/server.md's field table is out of date; replace the block with:\n" + expected
    )
