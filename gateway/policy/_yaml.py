"""YAML read into plain data with the line of every key, and without silent surprises."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from gateway.errors import PolicyError

KeyPath = tuple[str | int, ...]
"""A key path into the document: ("tasks", "summarize", "chain", 1)."""

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_TAG + name for name in ("str", "int", "float", "bool", "null"))
_MAX_VALUES = 100_000
_MAX_DEPTH = 64
"""A real policy nests about six levels deep; far deeper is a mistake, or a hostile file that
would otherwise end in a RecursionError instead of a message."""


class _PolicyLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and no timestamps.

    YAML 1.1 reads `on`, `off`, `yes`, `no` as booleans, which would turn the `on:` key of a
    retry policy into `True`, and dates like `2024-10-21` (an Azure api_version) into
    datetime objects.
    """


_PolicyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in {_TAG + "bool", _TAG + "timestamp"}]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PolicyLoader.add_implicit_resolver(
    _TAG + "bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def format_path(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class _TreeBuilder:
    """Turns composed YAML nodes into plain data, recording the line of every key path."""

    def __init__(self, loader: _PolicyLoader, source: str, text: str = "") -> None:
        self.loader = loader
        self.source = source
        self.lines: dict[KeyPath, int] = {}
        self._open: set[int] = set()
        self._count = 0
        self._text = text
        # Collection nodes already built: one built again was reached through an alias.
        self._built: set[int] = set()
        self._aliased = False

    def fail(self, message: str, path: KeyPath, node: yaml.Node) -> PolicyError:
        return PolicyError(
            message,
            path=format_path(path),
            line=node.start_mark.line + 1,
            source=self.source,
        )

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self._count += 1
        if self._count > _MAX_VALUES:
            raise self.fail(self._too_many_values(), path, node)
        if len(path) > _MAX_DEPTH:
            raise self.fail(
                f"the document nests more than {_MAX_DEPTH} levels deep here: a policy needs "
                "far fewer; flatten it",
                path,
                node,
            )
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _SCALAR_TAGS:
                raise self.fail(
                    f"unsupported YAML tag {node.tag!r}: write a plain string, number, "
                    "true/false or null",
                    path,
                    node,
                )
            return self.loader.construct_object(node)
        if id(node) in self._open:
            raise self.fail("a YAML alias refers to itself: remove the recursion", path, node)
        if id(node) in self._built:
            self._aliased = True
        self._built.add(id(node))
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode) and node.tag == _TAG + "seq":
                items = []
                for index, item in enumerate(node.value):
                    self.lines[(*path, index)] = item.start_mark.line + 1
                    items.append(self.build(item, (*path, index)))
                return items
            if isinstance(node, yaml.MappingNode) and node.tag == _TAG + "map":
                return self._mapping(node, path)
            raise self.fail(
                f"unsupported YAML tag {node.tag!r}: use a plain mapping or list", path, node
            )
        finally:
            self._open.discard(id(node))

    def _too_many_values(self) -> str:
        # Which limit, how large the file is, and whether aliases made it so: a plain file
        # this large and an alias bomb need different fixes.
        size = f"{self._text.count(chr(10)) + 1} lines, {len(self._text.encode())} bytes"
        if self._aliased:
            return (
                f"the document expands to more than {_MAX_VALUES} values (keys, items and "
                f"scalars) through YAML aliases, from a file of {size}: the limit on values "
                "keeps an alias bomb out; write the repeated parts out plainly"
            )
        return (
            f"the document holds more than {_MAX_VALUES} values (keys, items and scalars; "
            f"no YAML aliases involved) in a file of {size}: the limit bounds the time and "
            "memory a load takes; move settings providers share into `defaults:`, or split "
            "the policy across gateways"
        )

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        explicit: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        # Merge keys (`<<: *anchor`) first, so explicit keys can take their lines over.
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                sources = (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                for source_node in sources:
                    if not isinstance(source_node, yaml.MappingNode):
                        raise self.fail("`<<` merges only mappings", path, source_node)
                    for key, value in self.build(source_node, path).items():
                        merged.setdefault(key, value)
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                continue
            key = self._key(key_node, path)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise PolicyError(
                    f"duplicate key {key!r} (first at line {first_line[key]}): YAML keeps only "
                    "one of them, so delete or rename the other",
                    path=format_path((*path, key)),
                    line=line,
                    source=self.source,
                )
            first_line[key] = line
            self.lines[(*path, key)] = line
            explicit[key] = self.build(value_node, (*path, key))
        return {**merged, **explicit}

    def _key(self, node: yaml.Node, path: KeyPath) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail("a key is a mapping or list: keys must be plain names", path, node)
        key = self.build(node, path)
        if not isinstance(key, str):
            raise self.fail(
                f'key {node.value!r} is not text: keys must be names; quote it ("{node.value}":)',
                path,
                node,
            )
        return key


def read_policy_yaml(text: str, *, source: str = "<string>") -> Any:
    """The plain data tree of a policy file, read the way `parse_policy` reads it.

    YAML 1.2 booleans, dates kept as text, duplicate keys rejected; no `${VAR}` substitution
    and no validation. For tools that check the file form (e.g. against the JSON Schema).
    """
    return read_with_lines(text, source)[0]


def read_with_lines(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    loader: _PolicyLoader | None = None
    try:
        loader = _PolicyLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None, {}
        builder = _TreeBuilder(loader, source, text)
        builder.lines[()] = node.start_mark.line + 1
        return builder.build(node, ()), builder.lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "unreadable"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        raise PolicyError(
            f"malformed YAML: {problem}{context}; fix the syntax on this line",
            line=mark.line + 1 if mark else None,
            source=source,
        ) from None
    except yaml.YAMLError as exc:
        # Reader errors (control characters, bad encodings) carry a position but no line.
        raise PolicyError(f"unreadable YAML: {exc}", source=source) from None
    except RecursionError:
        # PyYAML composes nested collections recursively, before our depth check can run.
        raise PolicyError(
            f"the document nests far more than {_MAX_DEPTH} levels deep: a policy needs "
            "about six; flatten it",
            source=source,
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def line_of(path: KeyPath, lines: Mapping[KeyPath, int]) -> int | None:
    """The line of `path`, else of its nearest written ancestor (a missing key has no line)."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())
