"""The ops console at /console, driven in a real headless Chromium against `gateway serve` and
FakeUpstream providers; and its API over HTTP with client and admin keys."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from console_harness import (
    ADMIN_KEY,
    BACKUP_MODEL,
    CLIENT_KEY,
    KEYS_ENV,
    PRIMARY_MODEL,
    SECRET_PROMPT,
    ask,
    auth,
    chromium,
    eventually,
    live,
    policy_text,
    recent,
)
from server_harness import GATEWAY_SERVE, ServerProcess

from gateway.policy import parse_policy
from gateway.server._console_policy import policy_diff
from gateway.testing import Fault, SpawnedFakeUpstream

pytest.importorskip("playwright")
if not Path("/usr/bin/chromium").exists():
    pytest.fail("the console tests need Debian's chromium at /usr/bin/chromium (make system-deps)")

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def upstream() -> Iterator[SpawnedFakeUpstream]:
    fake = SpawnedFakeUpstream.start()
    try:
        yield fake
    finally:
        fake.process.terminate()
        fake.process.wait(timeout=10)


@pytest.fixture(scope="module")
def served(
    upstream: SpawnedFakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path]]:
    directory = tmp_path_factory.mktemp("console")
    policy = directory / "routing.yaml"
    policy.write_text(policy_text(upstream.url))
    server = ServerProcess(
        policy, log_path=directory / "server.log", env=KEYS_ENV, command=GATEWAY_SERVE
    )
    with server:
        server.wait_ready()
        yield server, policy


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture(autouse=True)
def fresh(served: tuple[ServerProcess, Path], upstream: SpawnedFakeUpstream) -> None:
    """Each test starts healthy: upstream healed, the original policy, breakers closed."""
    server, policy = served
    upstream.client.heal()
    original = policy_text(upstream.url)
    if policy.read_text() != original:
        policy.write_text(original)
        reload = httpx.post(server.url + "/api/v1/policy/reload", headers=auth(ADMIN_KEY))
        assert reload.status_code == 200, reload.text
    for provider in ("primary", "backup"):
        reset = httpx.post(
            f"{server.url}/console/api/breakers/{provider}/reset", headers=auth(ADMIN_KEY)
        )
        assert reset.status_code == 200, reset.text


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    tab = browser.new_page()
    try:
        yield tab
    finally:
        tab.close()


def sign_in(page: Any, url: str, key: str) -> None:
    page.goto(url + "/console")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Use key").click()
    page.locator("#who").filter(has_text=re.compile("^Signed in as ")).wait_for()


def breaker_cell(page: Any, provider: str) -> Any:
    return page.locator(f'#providers tr[data-provider="{provider}"] td.breaker')


# --- over HTTP ------------------------------------------------------------------------------


def test_a_client_key_reads_but_cannot_apply_or_change_a_breaker(
    served: tuple[ServerProcess, Path],
) -> None:
    server, policy = served
    before = policy.read_bytes()
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/console/api/live", headers=auth(CLIENT_KEY)).status_code == 200
        assert http.get("/console/api/live").status_code == 401
        loaded = http.get("/console/api/policy", headers=auth(ADMIN_KEY)).json()
        changed = {"text": loaded["text"] + "\n# edited\n", "loaded_sha256": loaded["sha256"]}
        for key in (CLIENT_KEY, None):
            headers = auth(key) if key else {}
            expected = 403 if key else 401
            refused = [
                http.post("/console/api/policy/apply", json=changed, headers=headers),
                http.post("/console/api/breakers/primary/force-open", headers=headers),
                http.post("/console/api/breakers/primary/reset", headers=headers),
                http.get("/console/api/policy", headers=headers),
            ]
            assert [r.status_code for r in refused] == [expected] * 4
            assert refused[0].json()["error"]["code"] in {"admin_key_required", "missing_api_key"}
        # Without a key, a body is never read: 401 whatever it holds.
        for route in ("check", "diff", "apply"):
            malformed = http.post(f"/console/api/policy/{route}", content=b"{not json")
            assert malformed.status_code == 401, (route, malformed.text)
    assert policy.read_bytes() == before
    assert live(server.url)["providers"]["primary"]["breaker"] == "closed"


def test_recent_requests_never_hold_the_prompt_and_record_attempts(
    served: tuple[ServerProcess, Path],
) -> None:
    server, _ = served
    assert ask(server.url, "summarize") == "backup"
    rows = eventually(lambda: recent(server.url, task="summarize")["requests"])
    latest = rows[0]
    assert (latest["task"], latest["outcome"], latest["provider"]) == (
        "summarize",
        "success",
        "backup",
    )
    assert [(a["provider"], a["outcome"]) for a in latest["attempts"]] == [("backup", "success")]
    assert latest["attempts"][0]["latency_s"] is not None
    everything = json.dumps(recent(server.url))
    assert SECRET_PROMPT not in everything
    assert "launch code" not in everything


def test_check_reports_what_gateway_check_reports(
    served: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    server, policy = served
    # Two problems: both are listed, the first one leads with its line and key path.
    draft = policy.read_text().replace("fail_max: 2", "fail_max: two")
    draft = draft.replace("max_concurrency: 8", "max_concurrency: many")
    checked = httpx.post(
        server.url + "/console/api/policy/check", json={"text": draft}, headers=auth(CLIENT_KEY)
    ).json()
    assert checked["valid"] is False
    problem = checked["problem"]
    assert (problem["line"], problem["path"]) == (4, "defaults.breaker.fail_max")

    # The same text in a file of the same name, checked by the command line.
    (tmp_path / policy.name).write_text(draft)
    cli = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", policy.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, **KEYS_ENV},
    )
    assert cli.returncode == 1
    printed = cli.stderr.strip().removeprefix("invalid: ").removeprefix(policy.name)
    assert problem["message"].removeprefix(str(policy)) == printed
    assert "max_concurrency" in printed


def test_diff_names_providers_added_removed_and_changed_and_the_tasks_they_touch(
    upstream: SpawnedFakeUpstream,
) -> None:
    old = parse_policy(policy_text(upstream.url))
    text = policy_text(upstream.url).replace(
        "  chat: {chain: [primary, backup]}", "  chat: {chain: [primary, spare]}"
    )
    text = text.replace("  summarize: {chain: [backup]}\n", "")
    text = re.sub(r"  backup: \{.*?\}\n", "", text, flags=re.S)
    text = text.replace("providers:\n", "providers:\n  spare: {type: ollama, model: m}\n")
    text = text.replace('api_key: "sk-a"', 'api_key: "sk-secret-new"')
    diff = policy_diff(old, parse_policy(text))
    assert diff["providers_added"] == ["spare"]
    assert diff["providers_removed"] == ["backup"]
    assert diff["providers_changed"] == {"primary": ["api_key: changed (values hidden)"]}
    assert diff["tasks_removed"] == ["summarize"]
    assert diff["tasks_changed"] == {"chat": ["chain changed: primary, backup -> primary, spare"]}
    assert diff["affected_tasks"] == ["chat", "summarize"]
    assert "sk-secret-new" not in json.dumps(diff)


# --- in the page ----------------------------------------------------------------------------


def test_live_view_shows_a_breaker_opening_and_the_screenshot(
    served: tuple[ServerProcess, Path], upstream: SpawnedFakeUpstream, page: Any
) -> None:
    server, _ = served
    sign_in(page, server.url, CLIENT_KEY)
    assert "CLOSED" in breaker_cell(page, "primary").inner_text()

    upstream.client.fail_always(PRIMARY_MODEL, Fault.server_error())
    # fail_max is 2: two failures on primary open it; backup answers each request.
    assert [ask(server.url, "chat") for _ in range(3)] == ["backup"] * 3

    cell = breaker_cell(page, "primary")
    cell.filter(has_text="OPEN").wait_for()
    row = page.locator('#providers tr[data-provider="primary"]')
    assert re.search(r"in \d+(\.\d+)? s", row.inner_text())  # time to the next probe
    assert "CLOSED" in breaker_cell(page, "backup").inner_text()
    # The chain a request takes now, each step with its breaker: primary is skipped while open.
    chat = page.locator('.task[data-task="chat"] li')
    chat.first.filter(has_text="primary").filter(has_text="OPEN").wait_for()
    assert "backup" in chat.nth(1).inner_text()
    # Recent requests show the failed attempt and who answered.
    requests = page.locator("#request-table tbody tr")
    requests.filter(has_text="primary: server_error").first.wait_for()
    assert "primary: breaker_open" in requests.first.inner_text()

    page.evaluate("window.scrollTo(0, 0)")
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "console.png"), full_page=True)
    assert (DOCS / "console.png").stat().st_size > 10_000


def test_a_client_key_in_the_page_cannot_drain_or_apply(
    served: tuple[ServerProcess, Path], page: Any
) -> None:
    server, policy = served
    before = policy.read_bytes()
    sign_in(page, server.url, CLIENT_KEY)
    assert "read only" in page.locator("#who").inner_text()
    page.get_by_role("button", name="Drain primary (force its breaker open)").click()
    page.locator("#notice").filter(has_text="admin key").wait_for()
    assert "not changed" in page.locator("#notice").inner_text()

    page.get_by_label("Policy file (YAML)").fill(before.decode() + "\n# from a client key\n")
    page.get_by_role("button", name="Apply").click()
    page.locator("#policy-result").filter(has_text="Not applied").wait_for()
    assert "admin key" in page.locator("#policy-result").inner_text()
    assert policy.read_bytes() == before
    assert live(server.url)["providers"]["primary"]["breaker"] == "closed"


def test_an_invalid_edit_shows_its_line_and_key_path(
    served: tuple[ServerProcess, Path], page: Any
) -> None:
    server, policy = served
    before = policy.read_bytes()
    sign_in(page, server.url, ADMIN_KEY)
    editor = page.get_by_label("Policy file (YAML)")
    page.locator("#policy-file").filter(has_text="loaded sha256").wait_for()
    editor.fill(editor.input_value().replace("fail_max: 2", "fail_max: two"))
    page.get_by_role("button", name="Check").click()
    result = page.locator("#policy-result")
    result.filter(has_text="Invalid").wait_for()
    shown = result.inner_text()
    assert "line 4" in shown
    assert "defaults.breaker.fail_max" in shown
    assert "whole number" in shown  # the loader's own message, as `gateway check` prints it

    page.get_by_role("button", name="Apply").click()
    result.filter(has_text="defaults.breaker.fail_max").wait_for()
    assert policy.read_bytes() == before


def test_a_valid_edit_shows_its_diff_applies_and_routes(
    served: tuple[ServerProcess, Path], page: Any
) -> None:
    server, policy = served
    old_sha = live(server.url)["policy_sha256"]
    sign_in(page, server.url, ADMIN_KEY)
    page.locator("#policy-file").filter(has_text="loaded sha256").wait_for()
    editor = page.get_by_label("Policy file (YAML)")
    edited = editor.input_value().replace("[primary, backup]", "[backup, primary]")
    edited = edited.replace("max_concurrency: 8", "max_concurrency: 4")
    editor.fill(edited)
    page.get_by_role("button", name="Show diff").click()
    result = page.locator("#policy-result")
    result.filter(has_text="Tasks affected").wait_for()
    shown = result.inner_text()
    assert "chain reordered: primary, backup -> backup, primary" in shown
    assert "max_concurrency: 8 -> 4" in shown
    assert "Tasks affected: chat, summarize" in shown

    page.get_by_role("button", name="Apply").click()
    result.filter(has_text="Applied").wait_for()
    assert policy.read_text() == edited
    assert ask(server.url, "chat") == "backup"
    assert live(server.url)["policy_sha256"] != old_sha
    log = server.log()
    audit = [line for line in log.splitlines() if "audit: policy" in line]
    assert len(audit) == 1 and "key sha256:" in audit[0] and old_sha in audit[0]
    assert ADMIN_KEY not in log


def test_a_change_on_disk_since_loading_is_refused_not_overwritten(
    served: tuple[ServerProcess, Path], page: Any
) -> None:
    server, policy = served
    sign_in(page, server.url, ADMIN_KEY)
    page.locator("#policy-file").filter(has_text="loaded sha256").wait_for()
    # Another operator edits the file after this editor loaded it.
    theirs = policy.read_text() + "# another operator's edit\n"
    policy.write_text(theirs)

    editor = page.get_by_label("Policy file (YAML)")
    editor.fill(editor.input_value().replace("[primary, backup]", "[backup, primary]"))
    page.get_by_role("button", name="Apply").click()
    result = page.locator("#policy-result")
    result.filter(has_text="changed on disk").wait_for()
    assert "HTTP 409" in result.inner_text()
    assert policy.read_text() == theirs


def test_keyboard_drives_the_main_actions(served: tuple[ServerProcess, Path], page: Any) -> None:
    server, _ = served
    page.goto(server.url + "/console")
    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "api-key"
    page.keyboard.type(ADMIN_KEY)
    page.keyboard.press("Enter")
    page.locator("#who").filter(has_text="admin").wait_for()
    page.locator("#policy-file").filter(has_text="loaded sha256").wait_for()

    def tab_to(name: str) -> None:
        for _ in range(80):
            page.keyboard.press("Tab")
            if (
                page.evaluate(
                    "document.activeElement.getAttribute('aria-label') || "
                    "document.activeElement.textContent"
                )
                == name
            ):
                outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
                assert outline != "none", f"{name} shows no focus"
                return
        raise AssertionError(f"Tab never reached {name!r}")

    tab_to("Drain primary (force its breaker open)")
    page.keyboard.press("Enter")
    page.locator("#notice").filter(has_text="drained until reset").wait_for()
    assert live(server.url)["providers"]["primary"]["forced"] is True
    breaker_cell(page, "primary").filter(has_text="OPEN (drained)").wait_for()
    # Polls update the table in place: the button keeps the keyboard's focus through them.
    polls = int(page.evaluate("document.body.dataset.polls"))
    eventually(lambda: int(page.evaluate("document.body.dataset.polls")) >= polls + 2)
    focused = page.evaluate("document.activeElement.getAttribute('aria-label')")
    assert focused == "Drain primary (force its breaker open)"
    # Focus stays on the button that was used, so the next Tab goes on from there.
    tab_to("Reset the breaker of primary")
    page.keyboard.press(" ")
    page.locator("#notice").filter(has_text="is now closed").wait_for()
    assert live(server.url)["providers"]["primary"]["breaker"] == "closed"

    tab_to("Check")
    page.keyboard.press("Enter")
    page.locator("#policy-result").filter(has_text="Valid").wait_for()


def test_recent_requests_filter_by_task_and_outcome(
    served: tuple[ServerProcess, Path], upstream: SpawnedFakeUpstream, page: Any
) -> None:
    server, _ = served
    assert ask(server.url, "summarize") == "backup"
    upstream.client.fail_always(BACKUP_MODEL, Fault.server_error())
    with pytest.raises(openai.APIStatusError):
        ask(server.url, "summarize")
    assert ask(server.url, "chat") == "primary"
    sign_in(page, server.url, CLIENT_KEY)
    rows = page.locator("#request-table tbody tr")
    rows.first.wait_for()

    page.get_by_label("Task").select_option("summarize")
    page.locator('#request-table tbody tr[data-task="chat"]').first.wait_for(state="detached")
    tasks = {rows.nth(i).get_attribute("data-task") for i in range(rows.count())}
    assert tasks == {"summarize"}

    page.get_by_label("Outcome").select_option("exhausted")
    page.locator('#request-table tbody tr[data-outcome="success"]').first.wait_for(state="detached")
    shown = [rows.nth(i).inner_text() for i in range(rows.count())]
    assert shown and all("summarize" in row and "exhausted" in row for row in shown)
    assert all("backup: server_error" in row for row in shown)


def test_narrower_than_a_laptop_nothing_overflows_and_state_reads_as_text(
    served: tuple[ServerProcess, Path], page: Any
) -> None:
    server, _ = served
    page.set_viewport_size({"width": 640, "height": 900})
    sign_in(page, server.url, CLIENT_KEY)
    breaker_cell(page, "primary").filter(has_text="CLOSED").wait_for()
    # Wide tables scroll inside their own box; the page itself never scrolls sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= 640
    assert page.get_by_role("button", name="Drain primary (force its breaker open)").is_visible()
