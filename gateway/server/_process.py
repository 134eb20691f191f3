"""`serve`: check the setup, then run uvicorn with one process or a supervisor and workers.

Signals: SIGINT/SIGTERM stop the server gracefully. SIGHUP reloads the policy file: a single
process reloads it itself; with --workers the parent forwards SIGHUP to every worker that has
finished starting, and each worker reloads its own router (breaker state and metrics are kept;
uvicorn's default of restarting the workers on SIGHUP is replaced). A worker still starting
reads the file as it starts.
"""

from __future__ import annotations

import copy
import importlib
import logging
import math
import os
import signal
import sys
import tempfile
from contextlib import ExitStack
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.supervisors.multiprocess import Multiprocess

from gateway._policy_files import read_policy_file
from gateway.errors import ConfigurationError, PolicyError
from gateway.metrics import MULTIPROC_ENV, mark_process_dead
from gateway.server._app import POLICY_ENV, SIGHUP_ENV
from gateway.server._auth import is_loopback
from gateway.server._config import API_KEYS_ENV, ServerSettings
from gateway.server._connections import ServeConfig, connection_class
from gateway.server._disconnect import SHUTDOWN

log = logging.getLogger("gateway.server")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_STARTUP_FAILED = 3
APP_FACTORY = "gateway.server._app:app_from_env"
SHUTDOWN_BACKSTOP_S = 5
"""Seconds after the grace period at which uvicorn cancels whatever still runs. At the end of the
grace the gateway ends its requests itself (an error event, a 503: see `_disconnect`); this is
for anything that did not end then, such as a final event blocked on a client not reading."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def log_config(level: str = "INFO") -> dict[str, Any]:
    """uvicorn's logging, plus the gateway's loggers on the same handler."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["gateway"] = {"handlers": ["default"], "level": level, "propagate": False}
    return config


def event_loop_and_parser() -> tuple[str, str]:
    """uvloop and httptools (dependencies of the gateway) where they import, else asyncio's
    own loop and h11: what uvicorn's `auto` picks, named so that the log can say it."""
    return _importable("uvloop", "asyncio"), _importable("httptools", "h11")


def _importable(name: str, fallback: str) -> str:
    try:
        importlib.import_module(name)
    except ImportError:
        return fallback
    return name


def serve(
    policy_path: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    *,
    banner: str | None = None,
) -> int:
    """Run the gateway until SIGINT/SIGTERM. Returns the process exit code.

    `banner` is printed to stdout once the setup checks have passed, as the server starts.
    """
    try:
        settings = ServerSettings.from_env()
    except ConfigurationError as exc:
        return _refuse(str(exc))
    if settings.open_mode and not is_loopback(host):
        return _refuse(
            f"refusing to listen on {host!r} with no API keys: anyone who can reach it could "
            f"spend your provider credits. Set {API_KEYS_ENV}=key1,key2 (clients send "
            "'Authorization: Bearer <key>'), or listen on 127.0.0.1"
        )
    if workers < 1:
        return _refuse(f"--workers is {workers}; use 1 or more")
    with ExitStack() as stack:
        try:
            policy = read_policy_file(policy_path)
        except PolicyError as exc:
            return _refuse(f"the policy cannot be served: {exc}")
        except OSError as exc:
            return _refuse(
                f"cannot read the policy file {policy_path!r}: {exc.strerror or exc}; "
                "pass --policy PATH"
            )
        os.environ[POLICY_ENV] = os.path.abspath(policy_path)
        os.environ[SIGHUP_ENV] = "1"
        if workers > 1 and not os.environ.get(MULTIPROC_ENV):
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-metrics-"))
            os.environ[MULTIPROC_ENV] = folder
        loop, http = event_loop_and_parser()
        config = ServeConfig(
            APP_FACTORY,
            settings=settings,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=False,  # the gateway writes its own access line (no query strings)
            log_config=log_config(),
            lifespan="on",
            loop=loop,
            # uvicorn's protocol for the parser, with the head timeout, the connection cap and
            # the start of the shutdown grace (see _connections).
            http=connection_class(http),
            ws="none",  # no WebSocket routes: an upgrade request is an ordinary request
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s) + SHUTDOWN_BACKSTOP_S,
            timeout_keep_alive=math.ceil(settings.keep_alive_s),
        )
        log.info("event loop: %s; HTTP parser: %s", loop, http)
        unavailable = [name for name, spec in policy.providers.items() if not spec.available]
        if unavailable:
            print(
                f"note: provider(s) {', '.join(unavailable)} unavailable: "
                "see GET /api/v1/monitoring/providers",
                file=sys.stderr,
            )
        if banner is not None:
            print(banner, flush=True)
        try:
            return _run(config)
        except SystemExit as exc:  # uvicorn exits this way when it cannot bind or start
            return exc.code if isinstance(exc.code, int) else EXIT_STARTUP_FAILED


class _Stopped(Exception):
    """SIGINT or SIGTERM, raised again by uvicorn once it has shut down."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped


def _run(config: uvicorn.Config) -> int:
    if config.workers == 1:
        SHUTDOWN.reset()  # a caller may serve again in this process after a shutdown
        server = uvicorn.Server(config)
        # uvicorn raises the signal that stopped it again after its shutdown, with the handler
        # it found installed: by default that kills the process (SIGTERM) before serve()'s own
        # cleanup and its caller's (such as `--simulate`'s FakeUpstream) run. Found installed,
        # this handler turns it into an exception that ends the run cleanly instead.
        previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS}
        try:
            server.run()
        except _Stopped:
            return EXIT_OK
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return EXIT_OK if server.started else EXIT_STARTUP_FAILED
    sock = config.bind_socket()
    try:
        _Workers(config, sockets=[sock]).run()
    finally:
        sock.close()
    return EXIT_OK


def _refuse(message: str) -> int:
    print(f"gateway serve: {message}", file=sys.stderr)
    return EXIT_USAGE


class _Workers(Multiprocess):
    """uvicorn's supervisor, with SIGHUP forwarded to workers instead of restarting them, and
    each exited worker's live gauges dropped from the shared metrics directory."""

    def handle_hup(self) -> None:
        logging.getLogger("uvicorn.error").info(
            "Received SIGHUP, asking each worker to reload the policy."
        )
        for process in self.processes:
            if process.pid is not None and process.is_ready(timeout=1):
                os.kill(process.pid, signal.SIGHUP)

    def keep_subprocess_alive(self) -> None:
        before = {p.pid for p in self.processes}
        super().keep_subprocess_alive()
        for pid in before - {p.pid for p in self.processes}:
            _forget_worker(pid)

    def join_all(self) -> None:
        super().join_all()
        for process in self.processes:
            _forget_worker(process.pid)


def _forget_worker(pid: int | None) -> None:
    if pid is not None and os.environ.get(MULTIPROC_ENV):
        try:
            mark_process_dead(pid)
        except OSError:
            log.debug("could not drop metrics of worker %s", pid, exc_info=True)
