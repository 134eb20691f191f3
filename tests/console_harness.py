"""What the console tests share: a policy over FakeUpstream, keys, requests through the openai
SDK, and a headless Chromium that never reaches the network."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai

CLIENT_KEY = "console-client-key-1"
ADMIN_KEY = "console-admin-key-1"
KEYS_ENV = {
    "GATEWAY_API_KEYS": CLIENT_KEY,
    "GATEWAY_ADMIN_KEYS": ADMIN_KEY,
    "GATEWAY_POLICY_WATCH_S": "0",
}
PRIMARY_MODEL = "console-model-a"
BACKUP_MODEL = "console-model-b"
SECRET_PROMPT = "the launch code is 7741"
"""A prompt that must never reach the console's ring, files or API."""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

T = TypeVar("T")


def policy_text(upstream_url: str, *, state: str = "", chat_chain: str = "primary, backup") -> str:
    return f"""\
version: 1
defaults:
  retry: {{attempts: 1}}
  breaker: {{fail_max: 2, reset_timeout_s: 600}}
providers:
  primary: {{type: openai, model: {PRIMARY_MODEL}, base_url: "{upstream_url}/v1", api_key: "sk-a"}}
  backup: {{type: openai, model: {BACKUP_MODEL}, base_url: "{upstream_url}/v1", api_key: "sk-b",
            max_concurrency: 8}}
prices:
  {PRIMARY_MODEL}: {{input: 3, output: 15}}
  {BACKUP_MODEL}: {{input: 0.5, output: 1.5}}
tasks:
  chat: {{chain: [{chat_chain}]}}
  summarize: {{chain: [backup]}}
{state}"""


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def ask(base_url: str, task: str, text: str = SECRET_PROMPT) -> str:
    """One chat request through the openai SDK; the provider that answered."""
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=task, messages=[{"role": "user", "content": text}]
    )
    return raw.headers["x-gateway-provider"]


def live(base_url: str) -> dict[str, Any]:
    response = httpx.get(base_url + "/console/api/live", headers=auth(CLIENT_KEY))
    assert response.status_code == 200, response.text
    return dict(response.json())


def recent(base_url: str, **filters: str) -> dict[str, Any]:
    response = httpx.get(
        base_url + "/console/api/requests", params=filters, headers=auth(CLIENT_KEY)
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def eventually(check: Callable[[], T | None], *, timeout_s: float = 15.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g}s: {what or check}")
        time.sleep(0.1)


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A browser context on a fresh profile (the system Chromium; nothing is downloaded)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()
