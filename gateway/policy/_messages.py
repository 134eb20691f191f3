"""Pydantic's validation errors turned into messages that name the key, the value and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from gateway._secrets import is_secret_name, mask_text
from gateway.errors import ErrorKind, PolicyError
from gateway.policy._yaml import KeyPath, format_path, line_of
from gateway.policy.document import PolicyDocument


def _unwrap(annotation: Any) -> Any:
    """The useful type inside Optional[...] and Annotated[...]."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            options = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation


def _annotation_at(loc: Sequence[str | int]) -> Any:
    """The declared type at a location in PolicyDocument, or None when it cannot be told."""
    annotation: Any = PolicyDocument
    for part in loc:
        annotation = _unwrap(annotation)
        origin = get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return None
            annotation = field.annotation
        elif origin is dict:
            annotation = get_args(annotation)[1]
        elif origin in (list, tuple, frozenset, set):
            annotation = get_args(annotation)[0]
        else:
            return None
    return _unwrap(annotation)


def _choices(annotation: Any) -> list[str]:
    if get_origin(annotation) is Literal:
        return [str(arg) for arg in get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, ErrorKind):
        return [kind.value for kind in annotation]
    return []


def did_you_mean(word: object, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


YAML_TYPE_NAMES = {
    dict: "a mapping",
    list: "a list",
    str: "text",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def describe(value: Any, path: KeyPath) -> str:
    if any(is_secret_name(part) for part in path):
        return "(a value not shown: it is a secret)"
    kind = YAML_TYPE_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, dict | list):
        return kind
    # A credential pasted under the wrong key is quoted masked (`Bearer ***`, `http://***@host`).
    shown = repr(mask_text(value) if isinstance(value, str) else value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return shown if isinstance(value, str | int | float | bool) else f"{kind} {shown}"


def _explain(error: Mapping[str, Any], loc: KeyPath) -> str:
    """One pydantic error as a sentence: what is wrong, the value, and what to write instead."""
    kind = error["type"]
    context = error.get("ctx") or {}
    value = error.get("input")
    field = next((part for part in reversed(loc) if isinstance(part, str)), "value")
    got = describe(value, loc)
    if kind == "missing":
        return f"`{field}` is required here: {_missing_hint(field)}"
    if kind == "extra_forbidden":
        model = _annotation_at(loc[:-1])
        is_model = isinstance(model, type) and issubclass(model, BaseModel)
        valid = list(model.model_fields) if is_model else []
        listing = f" Valid keys here: {', '.join(valid)}." if valid else ""
        return f"unknown key {field!r}{did_you_mean(field, valid)}.{listing}"
    if kind in {"greater_than", "greater_than_equal"}:
        bound = context.get("gt", context.get("ge"))
        relation = "greater than" if kind == "greater_than" else "at least"
        unit = " seconds" if field.endswith("_s") else ""
        return f"{field} must be {relation} {bound:g}{unit}, got {got}: use a larger value"
    if kind in {"literal_error", "enum"}:
        options = _choices(_annotation_at(loc))
        listing = ", ".join(options) if options else context.get("expected", "")
        noun = "error kind" if field in {"on", "trip_on"} or isinstance(loc[-1], int) else field
        return f"unknown {noun} {got}{did_you_mean(value, options)}; use one of: {listing}"
    if kind == "too_short":
        if field == "chain":
            return "chain is empty: list at least one provider, e.g. `chain: [my_provider]`"
        if field == "tasks":
            return "no tasks are defined: add at least one (a `default` task catches any name)"
        return f"{field} is empty: add at least {context.get('min_length', 1)} item(s)"
    if kind in {"value_error", "assertion_error"}:
        return str(context.get("error", error["msg"]))
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        if field == "chain":
            return (
                f"chain entries are a provider name, {{provider: NAME, params: {{...}}}} or "
                f"{{task: OTHER}}; got {got}"
            )
        return f"{field} must be a mapping of `key: value` lines, got {got}"
    if kind in {"list_type", "tuple_type", "set_type", "frozen_set_type"}:
        return f"{field} must be a list, e.g. [a, b], got {got}"
    if kind == "string_type":
        return f"{field} must be text, got {got}: quote it"
    if kind.startswith("int_"):
        return f"{field} must be a whole number, got {got}: write digits only, e.g. 3"
    if kind.startswith("float_") or kind == "finite_number":
        return f"{field} must be a finite number, got {got}: write a number, e.g. 30"
    if kind.startswith("bool_"):
        return f"{field} must be true or false, got {got}"
    return f"{error['msg']}; got {got}"


def _missing_hint(field: str) -> str:
    if field == "type":
        return "add `type: ...`, the provider's kind, e.g. openai, anthropic, ollama or litellm"
    if field == "version":
        return "write `version: 1` at the top of the file"
    if field == "providers":
        return "add `providers:` with named instances, e.g. `mini: {type: openai}`"
    if field == "tasks":
        return "add `tasks:` with at least one, e.g. `default: {chain: [mini]}`"
    return f"add `{field}: ...`"


def _as_path(loc: Sequence[str | int]) -> KeyPath:
    # pydantic marks a bad dict key with a trailing "[key]"; the key itself is already in loc.
    return tuple(part for part in loc if part != "[key]")


def translate(
    exc: ValidationError, lines: Mapping[KeyPath, int], source: str, prefix: KeyPath = ()
) -> PolicyError:
    """Every problem pydantic found, in one `PolicyError` whose `path` and `line` are the most
    useful one's: the topmost unknown key if there is one (a misspelt key is usually what
    leaves a required one missing), else the topmost problem. The message leads with that one
    and lists the rest by line, on one line (it goes to logs and `gateway check`'s output)."""
    problems: list[tuple[int, KeyPath, str, str]] = []
    for error in exc.errors(include_url=False):
        loc = (*prefix, *_as_path(error["loc"]))
        problems.append((line_of(loc, lines) or 0, loc, error["type"], _explain(error, loc)))
    problems.sort(key=lambda problem: problem[0])
    unknown = {loc: line for line, loc, kind, _ in problems if kind == "extra_forbidden"}
    lead = next((p for p in problems if p[2] == "extra_forbidden"), problems[0])
    line, loc, _, message = lead
    rest = [_pointed(p, unknown) for p in problems if p is not lead]
    if rest:
        count = f"{len(rest)} more problem{'s' if len(rest) > 1 else ''}"
        message = (
            message.rstrip(".")
            + f"; {count}: "
            + "; ".join(
                f"{f'line {at}, ' if at else ''}at {format_path(where) or 'the top level'}: {text}"
                for at, where, text in rest
            )
        )
    return PolicyError(message, path=format_path(loc), line=line or None, source=source)


def _pointed(
    problem: tuple[int, KeyPath, str, str], unknown: Mapping[KeyPath, int]
) -> tuple[int, KeyPath, str]:
    """A problem for the list after the lead; a missing key that an unknown sibling key
    probably misspells says so (`chain` is required ... `chian` at line 9)."""
    line, loc, kind, message = problem
    if "(did you mean" in message:
        # The suggestion is the fix; the lead already shows what a listing looks like.
        message = message.split(" Valid keys here:")[0]
    message = message.rstrip(".")
    if kind == "missing" and loc:
        parent, field = loc[:-1], str(loc[-1])
        for other, other_line in unknown.items():
            if other[:-1] == parent and did_you_mean(other[-1], [field]):
                message += f" (is {other[-1]!r} at line {other_line} meant to be it?)"
                break
    return line, loc[:-1] if kind == "missing" else loc, message


def combined(problems: Sequence[PolicyError], source: str) -> PolicyError:
    """Several problems found one by one (as resolution finds them) as one `PolicyError`:
    the topmost leads and gives `path` and `line`, the rest are listed by line after it."""
    unique: dict[tuple[str, str], PolicyError] = {}
    for problem in problems:
        unique.setdefault((problem.path, problem.reason), problem)
    ordered = sorted(unique.values(), key=lambda problem: problem.line or 0)
    lead, rest = ordered[0], ordered[1:]
    if not rest:
        return lead
    count = f"{len(rest)} more problem{'s' if len(rest) > 1 else ''}"
    message = (
        lead.reason.rstrip(".")
        + f"; {count}: "
        + "; ".join(
            f"{f'line {p.line}, ' if p.line else ''}at {p.path or 'the top level'}: "
            + p.reason.rstrip(".")
            for p in rest
        )
    )
    return PolicyError(message, path=lead.path, line=lead.line, source=source)
