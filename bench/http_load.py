"""Whole (non-streamed) requests over HTTP driven by wrk, the same way for every server.

wrk is a C load generator: its own cost per request is small and the same whatever answers,
so the servers' figures compare. One connection gives the latency of one request at a time
(its p50), `in_flight` connections the throughput. The POST body and headers come from a Lua
script written for each server; a run whose answers are not all 2xx raises `LoadFailed`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WRK = "wrk"
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


class LoadFailed(RuntimeError):
    """wrk could not run, or some of its requests did not succeed: the message says which."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    p50_s: float
    p99_s: float
    rate: float
    """Requests completed per second."""
    requests: int
    connections: int
    duration_s: float


def available() -> str | None:
    """None when wrk can run here, else why not."""
    if shutil.which(WRK) is None:
        return "wrk is not installed (`make bench` installs it with apt-get)"
    return None


def lua_script(path: str, body: dict[str, Any], headers: dict[str, str]) -> str:
    lines = ['wrk.method = "POST"', f"wrk.path = {json.dumps(path)}"]
    lines.append(f"wrk.body = {json.dumps(json.dumps(body, separators=(',', ':')))}")
    for name, value in {"content-type": "application/json", **headers}.items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise LoadFailed(f"wrk printed a latency this parser does not read: {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse(output: str, connections: int, duration_s: float) -> LoadResult:
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if bad:
        raise LoadFailed(f"{bad[1]} answers were not 2xx:\n{output[-800:]}")
    errors = re.search(r"Socket errors: (.*)", output)
    if errors and any(int(n) for n in re.findall(r"\d+", errors[1])):
        raise LoadFailed(f"socket errors ({errors[1]}):\n{output[-800:]}")
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    count = re.search(r"(\d+) requests in", output)
    if not (p50 and p99 and rate and count):
        raise LoadFailed(f"wrk's output lacks latency or rate:\n{output[-800:]}")
    return LoadResult(
        p50_s=_seconds(p50[1]),
        p99_s=_seconds(p99[1]),
        rate=float(rate[1]),
        requests=int(count[1]),
        connections=connections,
        duration_s=duration_s,
    )


def run(
    url: str,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    connections: int,
    duration_s: float,
    threads: int = 1,
) -> LoadResult:
    """wrk against `url` for `duration_s` with `connections` open; one thread by default, so
    the load generator takes one core and leaves the other to the server."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as folder:
        script = Path(folder) / "post.lua"
        script.write_text(lua_script(path, body, headers))
        command = [
            WRK,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration_s:g}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=duration_s + 60, check=False
        )
    if done.returncode != 0:
        raise LoadFailed(f"wrk exited with code {done.returncode}: {done.stderr[-400:]}")
    return parse(done.stdout, connections, duration_s)
