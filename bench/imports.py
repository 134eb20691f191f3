"""Import time, each measured in a fresh interpreter, best of several runs.

The time is taken inside the interpreter around the import statement alone, so the
interpreter's own start-up is not counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

CORE_DEPENDENCIES = (
    "pydantic",
    "pydantic_settings",
    "tenacity",
    "pybreaker",
    "prometheus_client",
    "aiohttp",
    "msgspec",
    "yaml",
)
"""pyproject.toml's `dependencies`, as imported."""

PROBES: dict[str, str] = {
    "openai": "import openai",
    "gateway": "from gateway import Router",
    "litellm": "import litellm",
    "core_deps": "import " + ", ".join(CORE_DEPENDENCIES),
}
"""Statements timed alone, by name."""

_TIMER = """
import json, sys, time
began = time.perf_counter()
{statement}
print(json.dumps(time.perf_counter() - began))
"""

_AFTER_DEPENDENCIES = f"""
import json, sys, time
began = time.perf_counter()
{PROBES["core_deps"]}
middle = time.perf_counter()
from gateway import Router
print(json.dumps([middle - began, time.perf_counter() - middle]))
"""

_MARKER = "---- bench: core dependencies imported ----"
_BREAKDOWN = f"""
import sys
{PROBES["core_deps"]}
sys.stderr.write({_MARKER!r} + "\\n")
sys.stderr.flush()
from gateway import Router
"""


@dataclass(frozen=True, slots=True)
class ImportTimes:
    best_s: dict[str, float]
    """Each probe's best time."""
    gateway_over_deps_s: float
    """`from gateway import Router` after its core dependencies are already imported."""
    deps_then_gateway_s: float
    """The core dependencies' own time in that same interpreter."""
    slowest_gateway_modules: list[tuple[str, float]]
    """(module, self seconds) imported by `from gateway import Router` beyond the core
    dependencies, slowest first (from `python -X importtime`)."""
    repeats: int


def _environment() -> dict[str, str]:
    # LiteLLM fetches its price map over the network at import without this.
    return dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")


def _run(code: str, *, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, *flags, "-c", code],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"import probe failed (exit {result.returncode}): {result.stderr.strip()[-800:]}"
        )
    return result


def _last_json(stdout: str) -> object:
    # A library may print its own lines first; the probe's answer is the last line.
    return json.loads(stdout.strip().splitlines()[-1])


def time_statement(statement: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        value = _last_json(_run(_TIMER.format(statement=statement)).stdout)
        assert isinstance(value, float)
        times.append(value)
    return min(times)


def gateway_after_dependencies(repeats: int) -> tuple[float, float]:
    """Best (dependencies, gateway added) over `repeats` fresh interpreters."""
    deps, added = [], []
    for _ in range(repeats):
        value = _last_json(_run(_AFTER_DEPENDENCIES).stdout)
        assert isinstance(value, list)
        deps.append(float(value[0]))
        added.append(float(value[1]))
    return min(deps), min(added)


def slowest_gateway_modules(limit: int = 8) -> list[tuple[str, float]]:
    """The modules `from gateway import Router` loads beyond its dependencies, by self time."""
    stderr = _run(_BREAKDOWN, flags=("-X", "importtime")).stderr
    _, found, after = stderr.partition(_MARKER)
    if not found:
        return []
    modules = []
    for line in after.splitlines():
        # "import time:  self [us] | cumulative | imported package"
        if not line.startswith("import time:"):
            continue
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        modules.append((fields[2].strip(), int(fields[0]) / 1e6))
    modules.sort(key=lambda item: item[1], reverse=True)
    return modules[:limit]


def measure(repeats: int) -> ImportTimes:
    best = {name: time_statement(statement, repeats) for name, statement in PROBES.items()}
    deps, added = gateway_after_dependencies(repeats)
    return ImportTimes(
        best_s=best,
        gateway_over_deps_s=added,
        deps_then_gateway_s=deps,
        slowest_gateway_modules=slowest_gateway_modules(),
        repeats=repeats,
    )
