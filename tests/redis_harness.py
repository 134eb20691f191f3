"""A real redis-server for tests: started on a free 127.0.0.1 port in a temporary directory.

    with RedisServer() as server:
        server.url          # redis://127.0.0.1:PORT/0
        server.kill()       # SIGKILL, as a crash would
        server.start()      # again, same port, empty (nothing is persisted)

Needs Debian's redis-server (`make system-deps` installs it). Without it, starting raises
`RedisServerUnavailable` saying so: tests that need Redis fail loudly rather than skip.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

START_TIMEOUT_S = 10.0


class RedisServerUnavailable(RuntimeError):
    """redis-server is not installed or would not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RedisServerUnavailable(
                "redis-server is not on PATH: install it with `make system-deps` "
                "(Debian package redis-server)"
            )
        self._executable = executable
        self.port = port or free_port()
        self._port_chosen = port is None  # then a port taken meanwhile is retried with another
        self._started_once = False
        self._dir = tempfile.TemporaryDirectory(prefix="gateway-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self) -> redis.Redis:
        """A synchronous client, for tests to look at what the gateway wrote."""
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def start(self) -> RedisServer:
        if self.running:
            return self
        for attempt in range(3):
            try:
                self._launch()
            except RedisServerUnavailable:
                if not self._port_chosen or self._started_once or attempt == 2:
                    raise
                self.port = free_port()
                continue
            self._started_once = True
            return self
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        log_path = Path(self._dir.name) / "redis.log"
        self._process = subprocess.Popen(
            [
                self._executable,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", self._dir.name,
                "--save", "",
                "--appendonly", "no",
                "--protected-mode", "yes",
                "--logfile", str(log_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self._wait_ready(log_path)

    def _wait_ready(self, log_path: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                assert self._process is not None
                if self._process.poll() is not None:
                    log = log_path.read_text() if log_path.exists() else ""
                    stderr = self._process.stderr.read().decode() if self._process.stderr else ""
                    raise RedisServerUnavailable(
                        f"redis-server exited with {self._process.returncode} on port "
                        f"{self.port}: {(stderr + log)[-500:]}"
                    )
                try:
                    if probe.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.02)
        finally:
            probe.close()
        self.stop()
        raise RedisServerUnavailable(f"redis-server did not answer within {START_TIMEOUT_S}s")

    def kill(self) -> None:
        """End it abruptly (SIGKILL): clients see their connections drop."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
