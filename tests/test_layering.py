"""The package's layering, read from its source: no import cycles, and nothing private used
from outside where it lives.

- No cycle among the modules of `gateway/`, counting imports inside functions and under
  `TYPE_CHECKING` (a cycle there is still two modules that cannot be read apart).
- A private module (`gateway/providers/_codec.py`) is imported only from inside its own
  package (`gateway.providers` and below); the rest of the code goes through the package's
  `__init__`.
- No module imports or reads another module's underscored name (`from m import _x`,
  `thing._x` where `_x` is not defined in the reading module itself).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "gateway"
PACKAGE = ROOT.name


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    imports: dict[str, int] = field(default_factory=dict)
    """Imported gateway module -> first line importing it."""


def _name_of(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _absolute(module: Module, level: int, target: str | None) -> str:
    if not level:
        return target or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([target] if target else [])])


def _modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted(ROOT.rglob("*.py")):
        name, is_package = _name_of(path)
        modules[name] = Module(name, path, is_package, ast.parse(path.read_text(), str(path)))
    for module in modules.values():
        for node in ast.walk(module.tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != module.name:
                    module.imports.setdefault(target, node.lineno)
    return modules


MODULES = _modules()


def _cycles() -> Iterator[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(name: str) -> Iterator[list[str]]:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for other in MODULES[name].imports:
            if other not in index:
                yield from visit(other)
                low[name] = min(low[name], low[other])
            elif other in on_stack:
                low[name] = min(low[name], index[other])
        if low[name] == index[name]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == name:
                    break
            if len(component) > 1:
                yield sorted(component)

    for name in MODULES:
        if name not in index:
            yield from visit(name)


def test_the_source_was_found() -> None:
    assert f"{PACKAGE}.providers" in MODULES
    assert len(MODULES) > 40


def test_no_import_cycles() -> None:
    assert list(_cycles()) == []


def _private_owner(name: str) -> str | None:
    """The package a private module belongs to (`a.b` for `a.b._c`), or None if public."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def test_private_modules_are_imported_only_from_their_own_package() -> None:
    reaches = []
    for module in MODULES.values():
        for target, line in module.imports.items():
            owner = _private_owner(target)
            if owner is None:
                continue
            inside = module.name == owner or module.name.startswith(owner + ".")
            if not inside:
                reaches.append(f"{module.path.relative_to(ROOT.parent)}:{line} imports {target}")
    assert reaches == []


def _defined_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@pytest.mark.parametrize("module", sorted(MODULES), ids=str)
def test_no_module_uses_another_modules_private_names(module: str) -> None:
    this = MODULES[module]
    own = _defined_names(this.tree)
    reaches = []
    for node in ast.walk(this.tree):
        if isinstance(node, ast.ImportFrom):
            target = _absolute(this, node.level, node.module)
            for alias in node.names:
                imported_module = f"{target}.{alias.name}" in MODULES
                if _is_private(alias.name) and not imported_module and target != module:
                    reaches.append(f"line {node.lineno}: from {target} import {alias.name}")
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in {"self", "cls"}:
                continue
            if node.attr in own or node.attr in {"_replace", "_asdict", "_fields", "_make"}:
                continue
            reaches.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert reaches == []
