"""Secret hygiene: recognisable API keys go in, and must never come out.

Keys are set the ways a deployment sets them (environment variables, `${VAR}` references and
literal values in the policy, the server's client and admin keys); then real traffic runs,
healthy and failing, through the real SDKs. Every place text leaves the gateway is searched
for the keys: logs at every level (the SDKs', httpx's and the gateway's), exceptions, reprs,
the masked policy, the metrics exposition, the CLI, the HTTP API and the demo's output.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from server_harness import ServerProcess, free_port

from gateway import GatewayError, LLMFactory, LLMService, PolicyError, Router
from gateway.cli import main as cli_main
from gateway.metrics import GatewayMetrics
from gateway.policy import parse_policy
from gateway.settings import get_settings
from gateway.state.redis import RedisState
from gateway.testing import FakeUpstream, Fault

MARK = "SECRET-"
"""In every key below and nowhere else: its presence anywhere means a key leaked (whole or
cut short, as long as at least its first 16 characters are shown)."""
OPENAI_KEY = "sk-SECRET-canary-1234"
ANTHROPIC_KEY = "sk-ant-SECRET-canary-5678"
LITERAL_KEY = "sk-lit-SECRET-canary-9012"  # written into the policy file itself
OLLAMA_KEY = "ollama-SECRET-canary-3456"  # a bearer token for an Ollama behind a proxy
CLIENT_KEY = "gw-cl-SECRET-canary-7890"  # the server's GATEWAY_API_KEYS
ADMIN_KEY = "gw-admin-SECRET-canary-2468"  # the server's GATEWAY_ADMIN_KEYS
ALL_KEYS = (OPENAI_KEY, ANTHROPIC_KEY, LITERAL_KEY, OLLAMA_KEY, CLIENT_KEY, ADMIN_KEY)

GPT, GPT4, CLAUDE, LLAMA = "gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5", "llama3.2"
MODEL_KEYS = {GPT: OPENAI_KEY, GPT4: LITERAL_KEY, CLAUDE: ANTHROPIC_KEY, LLAMA: OLLAMA_KEY}
MESSAGES = [{"role": "user", "content": "Say hello."}]
SDK_LOGGERS = (
    "openai",
    "anthropic",
    "aiohttp",
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "gateway",
)


def assert_clean(text: str, where: str) -> None:
    assert MARK not in text, f"a key leaked into {where}: ...{_around(text)}..."


def _around(text: str) -> str:
    at = text.find(MARK)
    return text[max(0, at - 60) : at + 40]


def policy_text(url: str) -> str:
    return f"""
version: 1
defaults:
  timeout_s: 1
  retry: {{attempts: 2, initial_backoff_s: 0.01, max_backoff_s: 0.02}}
  breaker: {{fail_max: 100, reset_timeout_s: 1}}
providers:
  gpt: {{type: openai, model: {GPT}, base_url: "{url}/v1", api_key: "${{OPENAI_API_KEY}}",
        options: {{client: sdk}}}}
  gpt_env: {{type: openai, model: {GPT}, base_url: "{url}/v1"}}
  gpt_http:
    {{type: openai_http, model: {GPT}, base_url: "{url}/v1", api_key: "${{OPENAI_API_KEY}}"}}
  gpt4: {{type: openai, model: {GPT4}, base_url: "{url}/v1", api_key: {LITERAL_KEY}}}
  claude: {{type: anthropic, model: {CLAUDE}, base_url: "{url}", api_key: "${{ANTHROPIC_API_KEY}}",
           options: {{client: sdk}}}}
  llama: {{type: ollama, model: {LLAMA}, base_url: "{url}", api_key: {OLLAMA_KEY}}}
prices:
  {LLAMA}: {{input: 0, output: 0}}
tasks:
  gpt: {{chain: [gpt]}}
  gpt_env: {{chain: [gpt_env]}}
  gpt_http: {{chain: [gpt_http]}}
  gpt4: {{chain: [gpt4]}}
  claude: {{chain: [claude]}}
  llama: {{chain: [llama]}}
  default: {{chain: [gpt, gpt4, claude, llama], deadline_s: 10}}
"""


@pytest.fixture
def keys_in_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def every_log_record(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The root logger and the SDKs' and httpx's own loggers, all at DEBUG."""
    caplog.set_level(logging.DEBUG)
    previous = {name: logging.getLogger(name).level for name in SDK_LOGGERS}
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield caplog
    for name, level in previous.items():
        logging.getLogger(name).setLevel(level)


def formatted(records: list[logging.LogRecord]) -> str:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(record) for record in records)


def chain_text(exc: BaseException) -> str:
    """What a traceback of `exc` would print: every chained cause and its message."""
    return "".join(traceback.format_exception(exc))


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as up:
        yield up


async def _drain(router: Router, task: str) -> str:
    return "".join([delta async for delta in router.stream(MESSAGES, task=task)])


async def test_keys_never_leave_the_router(
    upstream: FakeUpstream,
    tmp_path: Path,
    keys_in_environment: None,
    every_log_record: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(policy_text(upstream.url))
    registry = CollectorRegistry()
    router = Router.from_yaml(path, watch=False, hooks=[GatewayMetrics(registry)])
    errors: list[GatewayError] = []

    async def expect_failure(task: str, *, stream: bool = False) -> None:
        try:
            await (_drain(router, task) if stream else router.generate(MESSAGES, task=task))
        except GatewayError as exc:
            errors.append(exc)
        else:
            pytest.fail(f"task {task}: the scripted failure did not fail the request")

    try:
        for task in ("gpt", "gpt_env", "gpt_http", "gpt4", "claude", "llama"):
            assert (await router.generate(MESSAGES, task=task)).text
            assert await _drain(router, task)
        # What upstreams say when a key is refused or they break, failing whole requests.
        for model in MODEL_KEYS:
            upstream.fail_always(model, Fault.unauthorized())
        for task in ("gpt", "gpt_env", "gpt_http", "gpt4", "claude", "llama", "default"):
            await expect_failure(task)
            await expect_failure(task, stream=True)
        for fault in (Fault.server_error(), Fault.reset(), Fault.hang(), Fault.malformed_json()):
            upstream.heal()
            upstream.fail_always(CLAUDE, fault)
            await expect_failure("claude")
        upstream.heal()
        upstream.fail_always(GPT, Fault.cut_stream(after_chunks=1))
        await expect_failure("gpt", stream=True)
        upstream.heal()

        # Every exception, as a message, a repr and a traceback with all its causes.
        assert len(errors) >= 16
        for error in errors:
            for kind, text in (("str", str(error)), ("repr", repr(error))):
                assert_clean(text, f"{kind} of {type(error).__name__}")
            assert_clean(chain_text(error), f"the traceback of {type(error).__name__}")
            for attempt in getattr(error, "attempts", ()):
                assert_clean(repr(attempt), "an Attempt")

        # Every object a developer might print.
        policy = router.policy
        for name, candidate in router.candidates.items():
            assert_clean(repr(candidate), f"repr of candidate {name}")
            assert_clean(repr(candidate.client), f"repr of provider {name}")
            assert_clean(str(candidate.client), f"str of provider {name}")
            assert_clean(repr(policy.providers[name]), f"repr of ProviderSpec {name}")
        assert_clean(repr(router), "repr of Router")
        assert_clean(repr(policy), "repr of Policy")
        assert_clean(json.dumps(policy.masked()), "Policy.masked()")
        assert_clean(json.dumps(router.explain("default", MESSAGES)), "Router.explain()")
        assert_clean(repr(get_settings()), "repr of Settings")
        assert_clean(generate_latest(registry).decode(), "the metrics exposition")
    finally:
        await router.aclose()

    # The CLI prints policies and chains (it runs its own event loop: give it a thread).
    for argv in (
        ["check", str(path)],
        ["explain", "default", "--policy", str(path)],
        ["explain", "default", "--policy", str(path), "--json"],
    ):
        assert await asyncio.to_thread(cli_main, argv) == 0
    printed = capsys.readouterr()
    assert "gpt4" in printed.out
    assert_clean(printed.out + printed.err, "the CLI's output")

    # Logs at every level, from every logger, including the SDKs' request and response logs.
    records = every_log_record.records
    assert any(r.name.startswith(("openai", "anthropic")) for r in records), "SDK logs missing"
    assert any(r.name.startswith("httpx") and r.levelno == logging.INFO for r in records)
    assert_clean(formatted(records), "the logs")


async def test_keys_the_upstream_echoes_back_are_redacted(
    upstream: FakeUpstream, tmp_path: Path, keys_in_environment: None
) -> None:
    """Some upstreams quote the key they refused. Whatever the SDK keeps in its own exception
    (chained as the cause, by design), the gateway's errors must not repeat it."""
    path = tmp_path / "routing.yaml"
    path.write_text(policy_text(upstream.url))
    router = Router.from_yaml(path, watch=False, hooks=[GatewayMetrics(CollectorRegistry())])
    errors: list[GatewayError] = []
    try:
        for model, key in MODEL_KEYS.items():
            upstream.fail_always(model, Fault.status(401, message=f"Incorrect API key: {key}"))
        for task in ("gpt", "gpt_env", "gpt_http", "gpt4", "claude", "llama", "default"):
            for stream in (False, True):
                with pytest.raises(GatewayError) as caught:
                    if stream:
                        await _drain(router, task)
                    else:
                        await router.generate(MESSAGES, task=task)
                errors.append(caught.value)
    finally:
        await router.aclose()
    for error in errors:
        assert "Incorrect API key" in str(error)  # the upstream's words are kept...
        assert_clean(str(error), f"str of {type(error).__name__}")  # ...its key is not
        assert_clean(repr(error), f"repr of {type(error).__name__}")
        for attempt in getattr(error, "attempts", ()):
            assert_clean(repr(attempt), "an Attempt")


# --- the HTTP server ----------------------------------------------------------------------------


@pytest.fixture
async def served(
    upstream: FakeUpstream, tmp_path: Path, keys_in_environment: None
) -> AsyncIterator[ServerProcess]:
    path = tmp_path / "routing.yaml"
    path.write_text(policy_text(upstream.url))
    env = {
        "OPENAI_API_KEY": OPENAI_KEY,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_ADMIN_KEYS": ADMIN_KEY,
        "GATEWAY_POLICY_WATCH_S": "0",
        "OPENAI_LOG": "debug",  # the SDKs' own request logging, in the server's log
        "ANTHROPIC_LOG": "debug",
    }
    process = ServerProcess(path, log_path=tmp_path / "server.log", env=env)
    try:
        await asyncio.to_thread(process.wait_ready)
        yield process
    finally:
        await asyncio.to_thread(process.stop)


async def test_keys_never_leave_the_server(upstream: FakeUpstream, served: ServerProcess) -> None:
    seen: list[tuple[str, str]] = []

    def keep(where: str, response: httpx.Response) -> None:
        seen.append((where, response.text))
        seen.append((f"{where} headers", json.dumps(dict(response.headers))))

    sdk = openai.AsyncOpenAI(
        base_url=served.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=20
    )
    async with sdk, httpx.AsyncClient(base_url=served.url, timeout=20) as http:
        client = {"authorization": f"Bearer {CLIENT_KEY}"}
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        for task in ("gpt", "claude", "llama"):
            answer = await sdk.chat.completions.create(model=task, messages=MESSAGES)  # type: ignore[arg-type]
            assert answer.choices[0].message.content
        for model, key in MODEL_KEYS.items():
            upstream.fail_always(model, Fault.status(401, message=f"Incorrect API key: {key}"))
        for task in ("gpt", "claude", "llama", "default"):
            for stream in (False, True):
                body = {"model": task, "messages": MESSAGES, "stream": stream}
                response = await http.post("/v1/chat/completions", json=body, headers=client)
                assert response.status_code >= 400 or "error" in response.text
                keep(f"a failed {task} request (stream={stream})", response)
        upstream.heal()
        # A caller who sends a key that is not quite right must not see it echoed either.
        wrong = {"authorization": f"Bearer {CLIENT_KEY}x"}
        keep("a wrong client key", await http.get("/api/v1/policy", headers=wrong))
        keep(
            "a client key on an admin route",
            await http.post("/api/v1/policy/reload", headers=client),
        )
        for route in (
            "/api/v1/policy",
            "/api/v1/monitoring/providers",
            "/api/v1/monitoring/breakers",
            "/openapi.json",
        ):
            response = await http.get(route, headers=client)
            assert response.status_code == 200, (route, response.text)
            keep(route, response)
        keep("a reload", await http.post("/api/v1/policy/reload", headers=admin))
        keep("/metrics", await http.get("/metrics", headers=client))
        keep("/healthz", await http.get("/healthz"))

    policy = json.loads(dict(seen)["/api/v1/policy"])
    assert "gpt4" in json.dumps(policy)  # the policy is really there, keys masked
    for where, text in seen:
        assert_clean(text, where)
    await asyncio.to_thread(served.stop)
    log = served.log()
    # The log really holds the access lines and the SDKs' own debug request logs.
    assert "chat/completions" in log
    assert "openai._base_client" in log and "anthropic._base_client" in log
    assert_clean(log, "the server's log")


# --- secrets in the shapes a policy can hide them in ----------------------------------------------

URL_TOKEN = "tok-SECRET-in-userinfo"  # a token written as a URL's user name
URL_PASSWORD = "pw-SECRET-in-userinfo"  # a URL's user:password
QUERY_KEY = "qk-SECRET-in-query"  # ?api-key=... in a base_url
BEARER_KEY = "sk-hdr-SECRET-bearer"  # default_headers: {Authorization: Bearer ...}
HEADER_KEY = "xk-SECRET-header"  # default_headers: {x-api-key: ...}
REDIS_PASSWORD = "rp-SECRET-redis"  # redis://...?password=...
PLAIN_KEY = "sk-SECRET-plain-api-key"
SHAPE_KEYS = (URL_TOKEN, URL_PASSWORD, QUERY_KEY, BEARER_KEY, HEADER_KEY, REDIS_PASSWORD, PLAIN_KEY)


def shapes_policy_text(url: str, redis_url: str) -> str:
    """Providers whose endpoints and headers carry secrets outside `api_key`: an Ollama behind
    a proxy that takes a token as the URL's user name, an endpoint that takes its key in the
    query string (shown only: the SDK cannot send a base_url's query), and default headers."""
    host = url.split("://", 1)[1]
    return f"""
version: 1
defaults:
  timeout_s: 2
  retry: {{attempts: 1}}
  breaker: {{fail_max: 100, reset_timeout_s: 1}}
providers:
  tokened: {{type: ollama, model: {LLAMA}, base_url: "http://{URL_TOKEN}@{host}"}}
  userinfo: {{type: openai, model: {GPT}, base_url: "http://me:{URL_PASSWORD}@{host}/v1",
              api_key: {PLAIN_KEY}}}
  queried: {{type: openai, model: {GPT}, api_key: {PLAIN_KEY},
             base_url: "{url}/v1?api-version=2024-10-21&api-key={QUERY_KEY}"}}
  headed:
    type: openai
    model: {GPT}
    base_url: "{url}/v1"
    api_key: {PLAIN_KEY}
    options:
      client: sdk  # the SDK logs its requests at DEBUG, httpx2 each URL at INFO
      default_headers:
        Authorization: "Bearer {BEARER_KEY}"
        x-api-key: {HEADER_KEY}
        x-team: visible-team
prices:
  {LLAMA}: {{input: 0, output: 0}}
tasks:
  tokened: {{chain: [tokened]}}
  headed: {{chain: [headed]}}
  default: {{chain: [queried, headed]}}
state: {{backend: redis, url: "{redis_url}"}}
"""


def assert_shapes_masked(shown: dict[str, Any], *, redis_url_shown: str) -> None:
    """`shown` is a masked policy: every secret is ***, everything around it still shown."""
    text = json.dumps(shown)
    for key in SHAPE_KEYS:
        assert key not in text, f"{key} shown in {text}"
    providers = shown["providers"]
    assert providers["tokened"]["base_url"].startswith("http://***@127.0.0.1:")
    assert providers["userinfo"]["base_url"].startswith("http://***:***@127.0.0.1:")
    assert providers["queried"]["base_url"].endswith("/v1?api-version=2024-10-21&api-key=***")
    headers = providers["headed"]["options"]["default_headers"]
    assert headers == {"Authorization": "***", "x-api-key": "***", "x-team": "visible-team"}
    assert providers["tokened"]["api_key"] is None
    assert all(providers[name]["api_key"] == "***" for name in ("userinfo", "queried", "headed"))
    assert shown["state"]["url"] == redis_url_shown


def unreachable_redis(query_password: bool = True) -> tuple[str, str]:
    """A Redis URL nothing listens at, carrying a password, and how it must be shown."""
    port = free_port()
    if query_password:
        return (
            f"redis://127.0.0.1:{port}/0?password={REDIS_PASSWORD}",
            f"redis://127.0.0.1:{port}/0?password=***",
        )
    return (
        f"redis://default:{REDIS_PASSWORD}@127.0.0.1:{port}/0",
        f"redis://***:***@127.0.0.1:{port}/0",
    )


@pytest.mark.parametrize("query_password", [True, False], ids=["query", "userinfo"])
def test_policy_masked_hides_every_shape(query_password: bool) -> None:
    redis_url, redis_shown = unreachable_redis(query_password)
    policy = parse_policy(shapes_policy_text("http://127.0.0.1:9", redis_url))
    assert_shapes_masked(policy.masked(), redis_url_shown=redis_shown)
    for name, spec in policy.providers.items():
        assert_clean(json.dumps(spec.masked()), f"ProviderSpec.masked() of {name}")
        assert_clean(repr(spec), f"repr of ProviderSpec {name}")
        assert_clean(str(spec), f"str of ProviderSpec {name}")
    assert_clean(repr(policy.state), "repr of StateSpec")
    assert_clean(repr(policy), "repr of Policy")


def test_policy_masked_hides_secret_chain_params() -> None:
    text = shapes_policy_text("http://127.0.0.1:9", "redis://127.0.0.1:6379/0").replace(
        "  headed: {chain: [headed]}",
        "  headed: {chain: [{provider: headed, params: "
        f"{{extra_headers: {{x-api-key: {HEADER_KEY}, x-team: t}}, temperature: 0}}}}]}}",
    )
    assert HEADER_KEY in text
    params = parse_policy(text).masked()["tasks"]["headed"]["chain"][0]["params"]
    assert params == {"extra_headers": {"x-api-key": "***", "x-team": "t"}, "temperature": 0}


def test_settings_repr_masks_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", f"https://gw.example/v1?api-key={QUERY_KEY}")
    monkeypatch.setenv("OLLAMA_BASE_URL", f"http://{URL_TOKEN}@ollama.example:11434")
    monkeypatch.setenv("OPENAI_API_KEY", PLAIN_KEY)
    get_settings.cache_clear()
    try:
        settings = get_settings()
        for text in (repr(settings), str(settings)):
            assert_clean(text, "the settings' repr")
            assert "https://gw.example/v1?api-key=***" in text
            assert "http://***@ollama.example:11434" in text
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    "value", [f"Bearer {BEARER_KEY}", f"http://{URL_TOKEN}@host/v1", f"api_key={QUERY_KEY}"]
)
def test_policy_errors_mask_a_credential_written_in_the_wrong_place(value: str) -> None:
    """A validation error quotes the value it refuses; a credential pasted under the wrong key
    (here a number's) is quoted masked, and the error still says what to write instead."""
    text = f"""
version: 1
providers:
  mini: {{type: openai, model: {GPT}, api_key: {PLAIN_KEY}, weight: "{value}"}}
tasks:
  default: {{chain: [mini]}}
"""
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, environ={})
    message = str(caught.value)
    assert "providers.mini.weight" in message and "write a number" in message
    assert "***" in message
    assert_clean(message, "a policy error")


@pytest.mark.parametrize("query_password", [True, False], ids=["query", "userinfo"])
async def test_redis_password_never_logged_or_shown(
    query_password: bool, caplog: pytest.LogCaptureFixture
) -> None:
    redis_url, redis_shown = unreachable_redis(query_password)
    policy = parse_policy(shapes_policy_text("http://127.0.0.1:9", redis_url))
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    state = RedisState(policy.state, on_error=errors.append, command_timeout_s=0.2)
    try:
        breaker = state.breaker_factory()(policy.providers["headed"])
        breaker.admit()  # starts the background task, which finds no Redis
        for _ in range(200):
            if errors:
                break
            await asyncio.sleep(0.02)
        assert errors, "the unreachable Redis was never reported"
        assert redis_shown in repr(state)
    finally:
        await state.aclose()
    outage = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert outage and redis_shown in outage[0].getMessage()
    assert_clean(formatted(caplog.records), "the Redis backend's logs")
    assert_clean(repr(state), "repr of RedisState")


async def test_shapes_never_reach_logs_or_errors(
    upstream: FakeUpstream, every_log_record: pytest.LogCaptureFixture
) -> None:
    """Traffic through providers whose URL and headers carry secrets, healthy and failing, at
    DEBUG on every logger; the upstream's refusals quote secrets the gateway was never told are
    secrets (a URL's token, a query key, a bearer header) as well as the key it was given."""
    redis_url, _ = unreachable_redis()
    router = Router(parse_policy(shapes_policy_text(upstream.url, redis_url)))
    errors: list[GatewayError] = []
    try:
        for task in ("tokened", "headed"):
            assert (await router.generate(MESSAGES, task=task)).text
            assert await _drain(router, task)
        echoed = (
            f"Incorrect API key: {PLAIN_KEY}; request to https://{URL_TOKEN}@proxy.example/v1"
            f"?api-key={QUERY_KEY} with Authorization: Bearer {BEARER_KEY}"
        )
        for model in (GPT, LLAMA):
            upstream.fail_always(model, Fault.status(401, message=echoed))
        for task in ("tokened", "headed", "default"):
            for stream in (False, True):
                with pytest.raises(GatewayError) as caught:
                    await (_drain(router, task) if stream else router.generate(MESSAGES, task=task))
                errors.append(caught.value)
    finally:
        await router.aclose()
    for error in errors:
        assert "Incorrect API key" in str(error)  # the upstream's words are kept
        for key in SHAPE_KEYS:
            assert key not in str(error), str(error)
        assert_clean(str(error), f"str of {type(error).__name__}")
        assert_clean(repr(error), f"repr of {type(error).__name__}")
        for attempt in getattr(error, "attempts", ()):
            assert_clean(repr(attempt), "an Attempt")
    records = every_log_record.records
    assert any(r.name.startswith("openai") and r.levelno == logging.DEBUG for r in records)
    assert_clean(formatted(records), "the logs")


def test_client_libraries_logs_mask_urls(caplog: pytest.LogCaptureFixture) -> None:
    """httpx and the SDKs log each request's URL as given (a token as its user name, a key in
    its query) and, at DEBUG, the exceptions that quote it: both are masked as they are logged."""
    caplog.set_level(logging.DEBUG)
    url = f"http://{URL_TOKEN}@upstream.example/v1?api-key={QUERY_KEY}"
    for name in ("httpx", "httpx2", "openai._base_client", "anthropic._base_client"):
        caplog.set_level(logging.DEBUG, logger=name)  # importing litellm quiets httpx's
        logger = logging.getLogger(name)
        logger.info("HTTP Request: POST %s", url)
        try:
            raise ValueError(f"cannot reach {url}")
        except ValueError:
            logger.debug("Encountered Exception", exc_info=True)
    text = formatted(caplog.records) + caplog.text
    # Each URL is still there to read, its credentials masked (litellm, once imported, adds its
    # own filter to httpx's logger that hides a whole query string).
    assert text.count("http://***@upstream.example/v1?") == 16
    assert "cannot reach" in text
    assert_clean(text, "the client libraries' logs")


async def test_policy_route_hides_every_shape(upstream: FakeUpstream, tmp_path: Path) -> None:
    """`GET /api/v1/policy` is open to every client key: no secret may be in it."""
    redis_url, redis_shown = unreachable_redis()
    path = tmp_path / "routing.yaml"
    path.write_text(shapes_policy_text(upstream.url, redis_url))
    env = {"GATEWAY_API_KEYS": CLIENT_KEY, "GATEWAY_POLICY_WATCH_S": "0"}
    process = ServerProcess(path, log_path=tmp_path / "server.log", env=env)
    try:
        await asyncio.to_thread(process.wait_ready)
        headers = {"authorization": f"Bearer {CLIENT_KEY}"}
        async with httpx.AsyncClient(base_url=process.url, headers=headers, timeout=20) as http:
            response = await http.get("/api/v1/policy")
            assert response.status_code == 200, response.text
            answer = await http.post(
                "/v1/chat/completions", json={"model": "headed", "messages": MESSAGES}
            )
            assert answer.status_code == 200, answer.text
    finally:
        await asyncio.to_thread(process.stop)
    assert_shapes_masked(response.json()["policy"], redis_url_shown=redis_shown)
    assert_clean(response.text, "GET /api/v1/policy")
    assert_clean(process.log(), "the server's log")


# --- the demo -----------------------------------------------------------------------------------


async def test_the_demo_never_prints_its_keys() -> None:
    from gateway.demo import demo_policy_text, run_demo

    keys = {
        line.split("api_key:")[1].split(",")[0].split("}")[0].strip()
        for line in demo_policy_text().splitlines()
        if "api_key:" in line and not line.lstrip().startswith("#")
    }
    assert keys == {"demo-key"}  # what this test looks for is what the demo uses
    out = io.StringIO()
    view = await run_demo(out, requests_per_act=3)
    printed = out.getvalue()
    assert view.requests.total() > 0 and "summary:" in printed
    for key in keys:
        assert key not in printed


def test_the_keys_here_are_all_marked() -> None:
    # assert_clean looks for MARK; a key without it would be searched for by nobody.
    assert all(MARK in key for key in ALL_KEYS)
    assert all(len(key.split(MARK)[0]) + len(MARK) <= 16 for key in ALL_KEYS)


class _LeakyProvider(LLMService):
    """A plugin whose constructor fails quoting what it was given, key and URL included."""

    type_name = "leaky"

    def __init__(self, *, api_key: str | None = None, base_url: str | None = None, **_: Any):
        raise ValueError(f"cannot reach {base_url} with key {api_key}")


async def test_why_a_provider_is_unavailable_is_shown_without_its_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    LLMFactory.register("leaky", _LeakyProvider)
    try:
        policy = parse_policy(
            "version: 1\n"
            "providers:\n"
            "  p: {type: leaky, api_key: sk-leaky-123456789,"
            " base_url: 'https://tok-987654321@up.example/v1'}\n"
            "tasks:\n  default: {chain: [p]}\n"
        )
        with caplog.at_level(logging.WARNING, logger="gateway"):
            router = Router(policy, hooks=[], watch_interval_s=None)
        async with router:
            reason = router.explain("default")[0]["unavailable_reason"]
    finally:
        LLMFactory.unregister("leaky")

    assert reason.startswith("ValueError: cannot reach https://***@up.example/v1 with key ")
    for shown in (reason, caplog.text):
        assert "sk-leaky-123456789" not in shown
        assert "tok-987654321" not in shown
