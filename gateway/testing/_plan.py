"""What a healthy answer says, decided from the request itself ("scripted by the request").

A request with tools gets a tool call, the way a tool-using model would answer it; a request
that ends with a tool result gets text about that result; a request that asks for a schema gets
JSON shaped by it. So an agent loop (call, run the tool, answer) runs against the fake with no
scripting at all, and `reply(tool_calls=..., text=..., refusal=...)` overrides the decision.

The rules, in order:
- `reply(refusal=...)`: that refusal. `reply(tool_calls=[...])`: exactly those calls (with
  `reply(text=...)` as text before them); `tool_calls=[]`: text, never a call.
- tool_choice names a tool: call it.
- no tools, or tool_choice "none": text.
- the conversation ends with a tool result: text, unless tool_choice is "required" (Anthropic's
  "any"), which calls a tool; on Ollama (which has no tool_choice), a call to the first tool
  not yet called, and text once all were.
- otherwise: call the first tool not yet called in the history (all called: the first tool).
Tool arguments and schema-shaped text come from `_schema_sample.sample`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.testing._protocols import Call
from gateway.testing._replies import ReplySpec
from gateway.testing._schema_sample import sample

_RESULT_SHOWN = 200
"""How much of a tool result the text answer about it quotes."""


@dataclass(frozen=True, slots=True)
class Plan:
    text: str
    calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    """(tool name, arguments) of each call, in order."""
    refused: bool = False


def plan(call: Call, spec: ReplySpec) -> Plan:
    if spec.refusal is not None:
        return Plan(spec.refusal, refused=True)
    if spec.tool_calls:
        return Plan(spec.text or "", tuple((c.name, c.arguments) for c in spec.tool_calls))
    chosen = None if spec.tool_calls is not None else _chosen_tool(call)
    if chosen is None:
        return Plan(_text(call, spec))
    schema = dict(call.tools).get(chosen, {})
    arguments = sample(schema)
    return Plan("", ((chosen, arguments if isinstance(arguments, dict) else {}),))


def _chosen_tool(call: Call) -> str | None:
    choice = call.tool_choice
    if isinstance(choice, tuple):
        return choice[1]
    if not call.tools or choice == "none":
        return None
    names = [name for name, _ in call.tools]
    uncalled = [name for name in names if name not in call.called]
    if call.tool_result is not None and choice != "required":
        # Ollama has no tool_choice: its model, handed a tool result, goes on to the tools it
        # has not called yet (as an agent's model with a final-answer tool does), and answers
        # text once it has called them all.
        if call.protocol == "ollama" and uncalled:
            return uncalled[0]
        return None
    return uncalled[0] if uncalled else names[0]


def _text(call: Call, spec: ReplySpec) -> str:
    if spec.text is not None:
        return spec.text
    if call.json_schema is not None:
        return json.dumps(sample(call.json_schema))
    if call.tool_result is not None and not call.json_mode:
        shown = call.tool_result[:_RESULT_SHOWN]
        return f"The tool said: {shown}"
    return spec.text_for(call.model, json_mode=call.json_mode)
