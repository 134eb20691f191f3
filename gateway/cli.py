"""`gateway` command line: check a policy, explain a task's route, run the demo, serve HTTP."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from gateway.errors import GatewayError, PolicyError


def _check(args: argparse.Namespace) -> int:
    from gateway._policy_files import read_policy_file
    from gateway._runtime import build_runtime

    try:
        policy = read_policy_file(args.file)
    except PolicyError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    runtime = build_runtime(policy)
    print(f"{args.file}: valid (version {policy.version}, sha256 {policy.sha256[:12]})")
    for name, task in policy.tasks.items():
        rules = fall_through_rules(
            sorted(kind.value for kind in task.stop_on),
            {kind.value: target for kind, target in task.redirect},
        )
        print(f"task {name} ({task.strategy}{'; ' + rules if rules else ''}):")
        for step in runtime.chain(task):
            c = step.candidate
            status = "available" if c.client is not None else f"unavailable: {c.unavailable_reason}"
            print(f"  {c.name:<12} {c.spec.type:<13} {c.model:<28} {status}")
    asyncio.run(_close(runtime))
    return 0


async def _close(runtime: object) -> None:
    from gateway._runtime import Runtime, close_runtime

    assert isinstance(runtime, Runtime)
    await close_runtime(runtime)


API_KEY_ENV = "GATEWAY_API_KEY"
"""The key `gateway explain --server` sends, unless `--api-key` gives one."""


@dataclass(frozen=True, slots=True)
class TaskOrder:
    """What `gateway explain` prints: a task's order, from a fresh router or a server."""

    task: str
    strategy: str
    policy_sha256: str
    rows: list[dict[str, object]]
    stop_on: list[str] = field(default_factory=list)
    redirect: dict[str, str] = field(default_factory=dict)

    def rules(self) -> str | None:
        """The task's fall-through rules in one line, when it has any."""
        return fall_through_rules(self.stop_on, self.redirect)


def fall_through_rules(stop_on: Sequence[str], redirect: Mapping[str, str]) -> str | None:
    parts = []
    if stop_on:
        parts.append(f"stops on {', '.join(stop_on)}")
    parts += [f"{kind} goes to task {task}" for kind, task in redirect.items()]
    return "; ".join(parts) or None


def _explain(args: argparse.Namespace) -> int:
    try:
        order = _live_order(args) if args.server else _fresh_order(args)
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(order.rows, indent=2))
        return 0
    if args.server:
        print(
            f"task {order.task} ({order.strategy}) on {args.server}, live "
            f"(policy sha256 {order.policy_sha256[:12]}):"
        )
    else:
        print(
            f"task {order.task} ({order.strategy}) as {args.policy} orders it, with fresh "
            "breakers: not a running server's state (add --server URL for that):"
        )
    rules = order.rules()
    print(
        f"on a failure: {rules}; any other falls through to the next"
        if rules
        else "on a failure: falls through to the next"
    )
    print("a request would try, in order:")
    for i, row in enumerate(order.rows, 1):
        price = (
            f"${row['input_usd_per_mtok']:.2f}/${row['output_usd_per_mtok']:.2f} per Mtok"
            if row["input_usd_per_mtok"] is not None
            else "unpriced"
        )
        status = (
            "configured" if row["available"] else f"not configured: {row['unavailable_reason']}"
        )
        print(
            f"  {i}. {row['provider']:<12} {row['model']!s:<28} breaker {row['breaker']!s:<9} "
            f"{price:<28} {status}"
        )
    print(
        "(configured: its key and package are in place; whether the upstream answers shows in "
        "its breaker)"
    )
    return 0


def _fresh_order(args: argparse.Namespace) -> TaskOrder:
    """The policy file's order, from a router built here: breakers closed, nothing measured."""
    from prometheus_client import CollectorRegistry

    from gateway._router import Router
    from gateway.metrics import GatewayMetrics

    async def run() -> TaskOrder:
        router = Router.from_yaml(
            args.policy, watch=False, hooks=[GatewayMetrics(CollectorRegistry())]
        )
        try:
            rows = router.explain(args.task)
            spec = router.policy.task(args.task)
            return TaskOrder(
                spec.name,
                spec.strategy,
                router.policy.sha256,
                rows,
                sorted(kind.value for kind in spec.stop_on),
                {kind.value: target for kind, target in spec.redirect},
            )
        finally:
            await router.aclose()

    return asyncio.run(run())


def _live_order(args: argparse.Namespace) -> TaskOrder:
    """The order a running server would take now, from its monitoring API."""
    import urllib.error
    import urllib.parse
    import urllib.request

    base = args.server.rstrip("/")
    url = f"{base}/api/v1/monitoring/tasks/{urllib.parse.quote(args.task, safe='')}"
    key = args.api_key or os.environ.get(API_KEY_ENV)
    headers = {"accept": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            report = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        message = _error_message(exc.read())
        hint = (
            f" (pass --api-key or set {API_KEY_ENV} to a key from the server's GATEWAY_API_KEYS)"
            if exc.code in (401, 403)
            else ""
        )
        raise GatewayError(f"{base} answered {exc.code}: {message}{hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise GatewayError(
            f"cannot read {base}'s monitoring API ({reason}): is `gateway serve` running there?"
        ) from None
    return TaskOrder(
        report["task"],
        report["strategy"],
        report["policy_sha256"],
        report["order"],
        report.get("stop_on", []),
        report.get("redirect", {}),
    )


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:200] or "no details"


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import main

    return main()


def _serve(args: argparse.Namespace) -> int:
    from gateway.server import ServerSettings, serve

    if not args.simulate:
        return serve(args.policy, host=args.host, port=args.port, workers=args.workers)
    try:
        keys_required = not ServerSettings.from_env().open_mode
    except GatewayError:
        keys_required = False  # serve() refuses the bad setting itself, naming it
    with simulation() as sim:
        return serve(
            sim.policy_path,
            host=args.host,
            port=args.port,
            workers=args.workers,
            banner=simulation_instructions(
                _base_url(args.host, args.port), sim, keys_required=keys_required
            ),
        )


# --- `gateway serve --simulate` ---------------------------------------------------------------
#
# A FakeUpstream beside the server, serving `gateway demo`'s policy, so that a new user can try
# the gateway (and its fallbacks, by scripting faults into the fake) with no API keys and no
# network. The policy is gateway/policy_data/demo.yaml, unchanged: its providers' address is
# `${FAKE_UPSTREAM_URL}`, which the simulation puts in the environment, so every load of the
# file (the startup check, each worker, each reload) resolves it the policy loader's own way,
# and the served policy's sha256 is the shipped file's.

FAKE_UPSTREAM_ENV = "FAKE_UPSTREAM_URL"


@dataclass(frozen=True, slots=True)
class Simulation:
    fake_url: str
    policy_path: str


@contextmanager
def simulation() -> Iterator[Simulation]:
    """Start a FakeUpstream subprocess, copy the demo policy to a temporary file (so reloads
    have a file to re-read, and a user one to edit) and set FAKE_UPSTREAM_URL in this
    process's environment, which workers inherit; undo all three on exit."""
    from gateway.demo import demo_policy_text
    from gateway.testing import FakeUpstream

    previous = os.environ.get(FAKE_UPSTREAM_ENV)
    with (
        FakeUpstream.spawn() as fake,
        tempfile.TemporaryDirectory(prefix="gateway-simulate-") as folder,
    ):
        path = os.path.join(folder, "routing.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(demo_policy_text())
        os.environ[FAKE_UPSTREAM_ENV] = fake.url
        try:
            yield Simulation(fake_url=fake.url, policy_path=path)
        finally:
            if previous is None:
                os.environ.pop(FAKE_UPSTREAM_ENV, None)
            else:
                os.environ[FAKE_UPSTREAM_ENV] = previous


def _base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def simulation_instructions(base_url: str, sim: Simulation, *, keys_required: bool) -> str:
    """What to try first, printed once the server is about to start. With client keys
    configured (GATEWAY_API_KEYS), the curls carry one, or they would get 401."""
    fake_url = sim.fake_url
    if keys_required:
        keys = (
            "no provider keys needed; GATEWAY_API_KEYS is set, so clients need one of its "
            "keys:\n  export GATEWAY_KEY=<one of GATEWAY_API_KEYS>"
        )
        auth = ' -H "authorization: Bearer $GATEWAY_KEY"'
    else:
        keys, auth = "no keys needed", ""
    return f"""
Simulated gateway at {base_url} (providers are a FakeUpstream at {fake_url}; {keys})
Policy: {sim.policy_path} (a copy of `gateway demo`'s; edit it to try live reload)

  curl -s {base_url}/v1/chat/completions -H 'content-type: application/json'{auth} \\
       -d '{{"model": "default", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  curl -sN {base_url}/v1/chat/completions -H 'content-type: application/json'{auth} \\
       -d '{{"model": "summarize", "stream": true,
             "messages": [{{"role": "user", "content": "Hi"}}]}}'

  curl -s {base_url}/api/v1/monitoring/providers{auth}

Make the first provider fail and watch the gateway fall through (see x-gateway-* headers):

  curl -s -X POST {fake_url}/_fake/fail_always \\
       -d '{{"model": "gpt-4o-mini", "fault": {{"kind": "server_error"}}}}'
  curl -si {base_url}/v1/chat/completions -H 'content-type: application/json'{auth} \\
       -d '{{"model": "default", "messages": [{{"role": "user", "content": "Hello"}}]}}'
  curl -s -X POST {fake_url}/_fake/heal -d '{{}}'
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate a policy file and show each task's chain")
    check.add_argument("file", nargs="?", default="routing.yaml")
    check.set_defaults(func=_check)

    explain = sub.add_parser(
        "explain",
        help="the order a request for TASK would take: the policy's, or a running server's",
        description="Without --server: the policy file's order with fresh breakers (all closed). "
        "With --server URL: the order and breaker states of the gateway serving there now.",
    )
    explain.add_argument("task")
    explain.add_argument("--policy", default="routing.yaml")
    explain.add_argument("--json", action="store_true", help="print the candidates as JSON")
    explain.add_argument(
        "--server",
        metavar="URL",
        help="a running `gateway serve` (e.g. http://127.0.0.1:8000): show its live state",
    )
    explain.add_argument(
        "--api-key",
        help=f"a client key for --server (default: ${API_KEY_ENV})",
    )
    explain.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for --server (default 10)"
    )
    explain.set_defaults(func=_explain)

    demo = sub.add_parser("demo", help="the router's story on embedded fake upstreams")
    demo.set_defaults(func=_demo)

    serve = sub.add_parser("serve", help="the OpenAI-compatible HTTP gateway")
    serve.add_argument("--policy", default="routing.yaml")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--simulate",
        action="store_true",
        help="start fake upstreams beside the server with the demo policy",
    )
    serve.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
