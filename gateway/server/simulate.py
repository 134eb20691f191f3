"""`gateway serve --simulate`: a FakeUpstream beside the server, serving `gateway demo`'s policy.

A new user can then try the gateway (and its fallbacks, by scripting faults into the fake)
with no API keys and no network. The policy is gateway/policy_data/demo.yaml, unchanged: its
providers' address is `${FAKE_UPSTREAM_URL}`, which the simulation puts in the environment,
so every load of the file (the startup check, each worker, each reload) resolves it the
policy loader's own way, and the served policy's sha256 is the shipped file's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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


def instructions(base_url: str, sim: Simulation) -> str:
    """What to try first, printed at startup."""
    fake_url = sim.fake_url
    return f"""
Simulated gateway at {base_url} (providers are a FakeUpstream at {fake_url}; no keys needed)
Policy: {sim.policy_path} (a copy of `gateway demo`'s; edit it to try live reload)

  curl -s {base_url}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{{"model": "default", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  curl -sN {base_url}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{{"model": "summarize", "stream": true,
             "messages": [{{"role": "user", "content": "Hi"}}]}}'

  curl -s {base_url}/api/v1/monitoring/providers

Make the first provider fail and watch the gateway fall through (see x-gateway-* headers):

  curl -s -X POST {fake_url}/_fake/fail_always \\
       -d '{{"model": "gpt-4o-mini", "fault": {{"kind": "server_error"}}}}'
  curl -si {base_url}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{{"model": "default", "messages": [{{"role": "user", "content": "Hello"}}]}}'
  curl -s -X POST {fake_url}/_fake/heal -d '{{}}'
"""
