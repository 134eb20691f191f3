"""What a run ran on: CPU, cores, load, Python and the versions of the libraries compared."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

PACKAGES = ("gateway", "openai", "litellm", "httpx2", "pydantic", "fastapi", "uvicorn")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


@dataclass(frozen=True, slots=True)
class Machine:
    cpu: str = field(default_factory=cpu_model)
    cores: int = field(default_factory=usable_cores)
    python: str = field(
        default_factory=lambda: f"{platform.python_implementation()} {platform.python_version()}"
    )
    system: str = field(default_factory=platform.platform)
    versions: dict[str, str] = field(default_factory=versions)
