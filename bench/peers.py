"""The peers `make bench` measures the gateway against, installed by the bench itself.

Each lives under bench/.peers/ (git-ignored), so the project's own venv is never changed:

    tensorzero/   a venv with `tensorzero` (its Rust gateway, embedded in-process)
    litellm/      a venv with `litellm[proxy]` (LiteLLM's proxy server)
    portkey/      `npm install @portkey-ai/gateway` (Portkey's Node gateway)

A peer that cannot be installed or started is skipped: `PeerUnavailable` says why, and the
report prints it. Every server here binds 127.0.0.1, with one worker (as `gateway serve`), and
is configured with the bench's chain: [primary, backup] at the same FakeUpstream.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.proc import stop
from bench.scenarios import (
    BACKUP_MODEL,
    BENCH_KEY,
    DEAD_MODEL,
    IDLE_MODEL,
    LONG_BACKUP_MODEL,
    LONG_MODEL,
    MODEL,
    TENSORZERO_FAILOVER_MODEL,
    TENSORZERO_LONG_MODEL,
    TENSORZERO_MODEL,
)

PEERS_DIR = Path(__file__).resolve().parent / ".peers"
INSTALL_TIMEOUT_S = 900.0
READY_TIMEOUT_S = 120.0
LITELLM_MASTER_KEY = "sk-bench-local-master-key-0123456789"
"""LiteLLM's proxy refuses to start without a master key; this one guards a loopback port."""


class PeerUnavailable(RuntimeError):
    """A peer could not be installed or started; the message says why."""


def _run(command: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            cwd=cwd,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerUnavailable(f"{what}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        raise PeerUnavailable(f"{what} failed (code {done.returncode}): {' / '.join(tail)}")
    return done.stdout


def python_peer(folder: str, requirement: str, distribution: str) -> tuple[Path, str]:
    """A venv under bench/.peers/ with `requirement` installed: its python, and the installed
    version of `distribution`. Installed on first use; later runs reuse it."""
    venv = PEERS_DIR / folder
    python = venv / "bin" / "python"
    probe = [
        str(python),
        "-c",
        f"import importlib.metadata as m; print(m.version({distribution!r}))",
    ]
    if python.exists():
        try:
            return python, _run(probe, f"{distribution} in {venv}").strip()
        except PeerUnavailable:
            pass  # half-installed: install again
    PEERS_DIR.mkdir(exist_ok=True)
    _run([sys.executable, "-m", "venv", str(venv)], f"creating {venv}")
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ],
        f"pip install {requirement!r} into {venv}",
    )
    return python, _run(probe, f"{distribution} in {venv}").strip()


PORTKEY_PACKAGE = "@portkey-ai/gateway"
# Portkey's gateway appends headers to the response it streams. From @hono/node-server 1.14
# on, that response can share the upstream fetch response's immutable headers, and every
# stream then fails with 500 "Something went wrong" (TypeError: immutable; Portkey-AI/gateway
# #1389, open). 1.13.8, within Portkey's declared range, copies them instead.
PORTKEY_HONO_PIN = {"@hono/node-server": "1.13.8"}


def portkey() -> tuple[Path, str]:
    """Portkey's gateway under bench/.peers/portkey: its start script, and its version."""
    folder = PEERS_DIR / "portkey"
    package = folder / "node_modules" / "@portkey-ai" / "gateway"
    script = package / "build" / "start-server.js"
    manifest = {"dependencies": {PORTKEY_PACKAGE: "latest"}, "overrides": PORTKEY_HONO_PIN}
    manifest_path = folder / "package.json"
    wanted = json.dumps(manifest, indent=2) + "\n"
    if not script.exists() or not manifest_path.exists() or manifest_path.read_text() != wanted:
        folder.mkdir(parents=True, exist_ok=True)
        manifest_path.write_text(wanted)
        (folder / "package-lock.json").unlink(missing_ok=True)
        command = ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder)]
        try:
            _run(command, f"npm install {PORTKEY_PACKAGE}")
        except PeerUnavailable:
            # npm sometimes fails once on a cold cache; a second try is usually enough.
            _run(command, f"npm install {PORTKEY_PACKAGE}")
    if not script.exists():
        raise PeerUnavailable(f"npm installed {PORTKEY_PACKAGE} without {script}")
    version = json.loads((package / "package.json").read_text())["version"]
    hono = folder / "node_modules" / "@hono" / "node-server" / "package.json"
    hono_version = json.loads(hono.read_text())["version"] if hono.exists() else "?"
    return script, f"{version} (@hono/node-server {hono_version})"


def node_version() -> str:
    try:
        return _run(["node", "--version"], "node --version").strip()
    except PeerUnavailable:
        return "not installed"


# --- configuration -----------------------------------------------------------------------


def tensorzero_config(upstream_url: str, folder: Path) -> Path:
    """TensorZero's config: the bench's chains as models of two providers each (TensorZero
    tries a model's providers in `routing` order), observability off (no ClickHouse)."""
    lines = ["[gateway]", "observability.enabled = false", ""]
    for model, (first, second) in {
        TENSORZERO_MODEL: (MODEL, BACKUP_MODEL),
        TENSORZERO_LONG_MODEL: (LONG_MODEL, LONG_BACKUP_MODEL),
        TENSORZERO_FAILOVER_MODEL: (DEAD_MODEL, MODEL),
    }.items():
        lines += [f"[models.{model}]", 'routing = ["primary", "backup"]', ""]
        for name, upstream_model in (("primary", first), ("backup", second)):
            lines += [
                f"[models.{model}.providers.{name}]",
                'type = "openai"',
                f'model_name = "{upstream_model}"',
                f'api_base = "{upstream_url}/v1/"',
                'api_key_location = "env::BENCH_OPENAI_API_KEY"',
                "",
            ]
    path = folder / "tensorzero.toml"
    path.write_text("\n".join(lines))
    return path


def tensorzero_environment() -> dict[str, str]:
    return {"BENCH_OPENAI_API_KEY": BENCH_KEY, "RUST_LOG": "warn"}


LITELLM_MODELS = {"bench": (MODEL, BACKUP_MODEL), "long": (LONG_MODEL, LONG_BACKUP_MODEL)}
LITELLM_IDLE = "idle"


def litellm_proxy_config(upstream_url: str, folder: Path) -> Path:
    """LiteLLM's proxy config: each chain a model with a fallback, the Router settings of the
    bench's LiteLLM Router row (2 retries, cooldown after 5 fails for 30 s, 30 s timeout)."""
    models, fallbacks = [], []
    pairs = {**LITELLM_MODELS, LITELLM_IDLE: (IDLE_MODEL, LONG_BACKUP_MODEL)}
    for name, (first, second) in pairs.items():
        for alias, upstream_model in ((name, first), (f"{name}-backup", second)):
            params = {
                "model": f"openai/{upstream_model}",
                "api_base": f"{upstream_url}/v1",
                "api_key": BENCH_KEY,
            }
            models.append({"model_name": alias, "litellm_params": params})
        fallbacks.append({name: [f"{name}-backup"]})
    config = {
        "model_list": models,
        "router_settings": {
            "fallbacks": fallbacks,
            "num_retries": 2,
            "allowed_fails": 5,
            "cooldown_time": 30,
            "timeout": 30,
        },
        "litellm_settings": {"telemetry": False, "suppress_debug_info": True},
    }
    path = folder / "litellm_proxy.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


def portkey_config(upstream_url: str, first: str, second: str) -> str:
    """Portkey's `x-portkey-config` header: fallback from `first` to `second`."""
    targets = [
        {
            "provider": "openai",
            "api_key": BENCH_KEY,
            "custom_host": f"{upstream_url}/v1",
            "override_params": {"model": model},
        }
        for model in (first, second)
    ]
    config = {"strategy": {"mode": "fallback"}, "targets": targets}
    return json.dumps(config, separators=(",", ":"))


# --- servers -------------------------------------------------------------------------------


@dataclass
class PeerServer:
    """A peer's server process until closed."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        stop(self.process)


def start_server(
    name: str,
    command: list[str],
    *,
    port: int,
    health_path: str,
    log: Path,
    env: dict[str, str],
    cwd: Path | None = None,
) -> PeerServer:
    """Start `command` and wait until `health_path` answers 200; `PeerUnavailable` if not."""
    with log.open("w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
    server = PeerServer(name, process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = " / ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise PeerUnavailable(f"{name} exited with code {process.returncode}: {tail}")
        try:
            if httpx.get(server.url + health_path, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.close()
    raise PeerUnavailable(f"{name} did not answer {health_path} within {READY_TIMEOUT_S:g} s")


def start_litellm_proxy(
    python: Path, config: Path, port: int, log: Path, env: dict[str, str]
) -> PeerServer:
    litellm = python.parent / "litellm"
    command = [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--num_workers", "1"]
    environment = {
        **env,
        "LITELLM_MASTER_KEY": LITELLM_MASTER_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
    }
    return start_server(
        "LiteLLM proxy",
        command,
        port=port,
        health_path="/health/liveliness",
        log=log,
        env=environment,
    )


def start_portkey(script: Path, port: int, log: Path, env: dict[str, str]) -> PeerServer:
    # --headless: no web console; production: no console assets read at start. Its start
    # script cannot choose an interface: bench/loopback.mjs makes it listen on 127.0.0.1.
    loopback = Path(__file__).with_name("loopback.mjs")
    command = ["node", "--import", str(loopback), str(script), f"--port={port}", "--headless"]
    environment = {**env, "NODE_ENV": "production"}
    return start_server(
        "Portkey gateway",
        command,
        port=port,
        health_path="/",
        log=log,
        env=environment,
        cwd=script.parent,
    )


def litellm_headers() -> dict[str, str]:
    return {"authorization": f"Bearer {LITELLM_MASTER_KEY}"}
