"""A real Prometheus server for tests: scrapes given targets every second, answers PromQL.

    with PrometheusServer(targets=["127.0.0.1:9100"]) as prom:
        prom.wait_for_targets_up()
        prom.wait_for("sum(gateway_requests_total)", lambda v: v == {(): 3.0})

Targets are read from a file_sd file, so `set_targets()` can point a running server at a
new exporter (one server per module can serve several tests). The binary is Debian's
`prometheus` (`make system-deps` installs it); without it, starting fails with that advice.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Self

Labels = tuple[tuple[str, str], ...]
"""A sample's labels, sorted, without __name__: hashable, comparable, printable."""


class PrometheusError(RuntimeError):
    """Prometheus could not start, or rejected a query (the message carries its reason)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """One `prometheus` process on a free 127.0.0.1 port, with temporary config and storage."""

    def __init__(
        self,
        targets: Iterable[str] = (),
        *,
        scrape_interval: str = "1s",
        rule_files: Iterable[str | Path] = (),
        binary: str | None = None,
    ) -> None:
        self._targets = list(targets)
        self._scrape_interval = scrape_interval
        self._rule_files = [str(Path(p).resolve()) for p in rule_files]
        self._binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log: BinaryIO | None = None
        self.port = 0

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Self:
        binary = self._binary or shutil.which("prometheus")
        if binary is None:
            raise PrometheusError(
                "the prometheus binary is not installed (Debian package 'prometheus'): "
                "run `make system-deps`"
            )
        self._workdir = Path(tempfile.mkdtemp(prefix="prometheus-test-"))
        self.set_targets(self._targets)
        config = self._workdir / "prometheus.yml"
        config.write_text(json.dumps(self._config()))  # JSON is YAML
        self.port = free_port()
        self._log = (self._workdir / "prometheus.log").open("wb")
        self._process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self._workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.console.templates=",
                "--web.console.libraries=",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start() if self._process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_targets(self, targets: Iterable[str]) -> None:
        """Scrape these host:port targets from now on (Prometheus rereads the file itself)."""
        self._targets = list(targets)
        if self._workdir is None:
            return
        path = self._workdir / "targets.json"
        staging = path.with_suffix(".tmp")
        staging.write_text(json.dumps([{"targets": self._targets, "labels": {}}]))
        os.replace(staging, path)  # atomic, so Prometheus never reads half a file

    def log_tail(self, lines: int = 30) -> str:
        if self._workdir is None or not (self._workdir / "prometheus.log").exists():
            return ""
        text = (self._workdir / "prometheus.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _config(self) -> dict[str, Any]:
        assert self._workdir is not None
        return {
            "global": {
                "scrape_interval": self._scrape_interval,
                "scrape_timeout": self._scrape_interval,
                "evaluation_interval": self._scrape_interval,
            },
            "rule_files": self._rule_files,
            "scrape_configs": [
                {
                    "job_name": "gateway",
                    "file_sd_configs": [
                        {"files": [str(self._workdir / "targets.json")], "refresh_interval": "1s"}
                    ],
                }
            ],
        }

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self._process.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise PrometheusError(f"prometheus not ready after {timeout}s:\n{self.log_tail()}")

    # -- HTTP API -----------------------------------------------------------------------------

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET /api/v1/<path>; returns `data`, or raises PrometheusError with Prometheus' reason."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = json.load(error)  # 4xx answers carry errorType/error as JSON
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {dict(params or {})}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> dict[Labels, float]:
        """An instant query now, as {labels: value}; a scalar result has the key ()."""
        data = self.api("query", {"query": expr})
        if data["resultType"] == "scalar":
            return {(): float(data["result"][1])}
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} returned a {data['resultType']}, not a vector")
        return {
            tuple(sorted((k, v) for k, v in item["metric"].items() if k != "__name__")): float(
                item["value"][1]
            )
            for item in data["result"]
        }

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[dict[Labels, float]], bool],
        timeout: float = 15.0,
    ) -> dict[Labels, float]:
        """Poll `query(expr)` until `predicate` holds; on timeout, fail showing the last answer."""
        deadline = time.monotonic() + timeout
        last: dict[Labels, float] | None = None
        while True:
            last = self.query(expr)
            if predicate(last):
                return last
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"after {timeout}s, {expr!r} is still {last}\n"
                    f"targets: {self.targets()}\nprometheus log:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets with their health and last error."""
        return [
            {k: t.get(k) for k in ("scrapeUrl", "health", "lastError")}
            for t in self.api("targets", {"state": "active"})["activeTargets"]
        ]

    def wait_for_targets_up(self, timeout: float = 15.0) -> None:
        """Wait until every target set with `set_targets` has been scraped successfully."""
        deadline = time.monotonic() + timeout
        while True:
            targets = self.targets()
            if len(targets) == len(self._targets) and all(t["health"] == "up" for t in targets):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"targets not up after {timeout}s: {targets}\n{self.log_tail()}"
                )
            time.sleep(0.2)
