"""Drive a FakeUpstream from outside its process: a control API client and a subprocess handle."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gateway.testing._faults import Fault

if TYPE_CHECKING:
    import httpx

READY_PREFIX = "FAKE_UPSTREAM_URL="


class ControlAPIError(RuntimeError):
    """The control API refused a call; the message is its explanation."""


def _fault_dicts(faults: tuple[Fault | Mapping[str, Any], ...]) -> list[dict[str, Any]]:
    return [
        f.to_dict() if isinstance(f, Fault) else Fault.from_dict(dict(f)).to_dict() for f in faults
    ]


class FakeUpstreamClient:
    """Calls a FakeUpstream's /_fake/ control API. Each method has an async twin named `a<name>`.

    client = FakeUpstreamClient("http://127.0.0.1:8080")
    client.script("gpt-4o", Fault.rate_limit(retry_after=1))
    await client.ascript("gpt-4o", Fault.ok())
    """

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"FakeUpstreamClient({self.url!r})"

    # Each operation is described once, as (method, route, json body, query params).

    @staticmethod
    def _reply_op(
        model: str | None,
        text: str | None,
        cached_input_tokens: int,
        latency_s: float,
        chunk_delay_s: float,
        tool_calls: Sequence[Mapping[str, Any]] | None = None,
        refusal: str | None = None,
    ) -> tuple[str, str, Any, Any]:
        body: dict[str, Any] = {
            "model": model,
            "text": text,
            "cached_input_tokens": cached_input_tokens,
            "latency_s": latency_s,
            "chunk_delay_s": chunk_delay_s,
        }
        if tool_calls is not None:
            body["tool_calls"] = [dict(call) for call in tool_calls]
        if refusal is not None:
            body["refusal"] = refusal
        return "POST", "reply", body, None

    @staticmethod
    def _chaos_op(
        seed: int | str | None,
        rates: Mapping[str, float] | None,
        retry_after: float | None,
        hang_s: float | None,
    ) -> tuple[str, str, Any, Any]:
        body = {
            "seed": seed,
            "rates": dict(rates) if rates is not None else None,
            "retry_after": retry_after,
            "hang_s": hang_s,
        }
        return "POST", "chaos", body, None

    @staticmethod
    def _counts_op(model: str | None, protocol: str | None) -> tuple[str, str, Any, Any]:
        params = {k: v for k, v in (("model", model), ("protocol", protocol)) if v is not None}
        return "GET", "counts", None, params

    def _check(self, response: httpx.Response) -> Any:
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code != 200:
            reason = data.get("error") if isinstance(data, dict) else response.text[:200]
            raise ControlAPIError(
                f"FakeUpstream control API: HTTP {response.status_code}: {reason}"
            )
        return data

    def _call(self, op: tuple[str, str, Any, Any]) -> Any:
        # Imported here: FakeUpstream itself (the demo, `serve --simulate`) must not need httpx,
        # which only the `test` extra installs; only this control client does.
        import httpx

        method, route, body, params = op
        with httpx.Client(timeout=self.timeout_s) as client:
            response = client.request(method, f"{self.url}/_fake/{route}", json=body, params=params)
        return self._check(response)

    async def _acall(self, op: tuple[str, str, Any, Any]) -> Any:
        import httpx

        method, route, body, params = op
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            response = await client.request(
                method, f"{self.url}/_fake/{route}", json=body, params=params
            )
        return self._check(response)

    # --- sync -------------------------------------------------------------------------------

    def health(self) -> bool:
        return bool(self._call(("GET", "health", None, None)).get("ok"))

    def reply(
        self,
        model: str | None,
        text: str | None = None,
        *,
        cached_input_tokens: int = 0,
        latency_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        tool_calls: Sequence[Mapping[str, Any]] | None = None,
        refusal: str | None = None,
    ) -> None:
        """As `FakeUpstream.reply` (all but `usage`)."""
        self._call(
            self._reply_op(
                model, text, cached_input_tokens, latency_s, chunk_delay_s, tool_calls, refusal
            )
        )

    @staticmethod
    def _embedding_model_op(
        model: str, dimensions: int, takes_dimensions: bool | None
    ) -> tuple[str, str, Any, Any]:
        body = {"model": model, "dimensions": dimensions, "takes_dimensions": takes_dimensions}
        return "POST", "embedding_model", body, None

    def embedding_model(
        self, model: str, *, dimensions: int, takes_dimensions: bool | None = None
    ) -> None:
        """As `FakeUpstream.embedding_model`."""
        self._call(self._embedding_model_op(model, dimensions, takes_dimensions))

    def script(self, model: str, *faults: Fault | Mapping[str, Any]) -> None:
        self._call(("POST", "script", {"model": model, "faults": _fault_dicts(faults)}, None))

    def script_next(self, *faults: Fault | Mapping[str, Any]) -> None:
        self._call(("POST", "script_next", {"faults": _fault_dicts(faults)}, None))

    def fail_always(self, model: str, fault: Fault | Mapping[str, Any]) -> None:
        body = {"model": model, "fault": _fault_dicts((fault,))[0]}
        self._call(("POST", "fail_always", body, None))

    def heal(self, model: str | None = None) -> None:
        self._call(("POST", "heal", {"model": model} if model else {}, None))

    def chaos(
        self,
        seed: int | str | None,
        rates: Mapping[str, float] | None = None,
        *,
        retry_after: float | None = 0.05,
        hang_s: float | None = None,
    ) -> None:
        self._call(self._chaos_op(seed, rates, retry_after, hang_s))

    def stop_chaos(self) -> None:
        self._call(("POST", "stop_chaos", None, None))

    def counts(self) -> dict[str, Any]:
        """{"total", "by_model", "by_protocol", "injected", "open_connections", "count"}."""
        result: dict[str, Any] = self._call(self._counts_op(None, None))
        return result

    def count(self, model: str | None = None, protocol: str | None = None) -> int:
        return int(self._call(self._counts_op(model, protocol))["count"])

    def reset_counts(self) -> None:
        self._call(("POST", "reset", None, None))

    def requests(self, limit: int = 100) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call(("GET", "requests", None, {"limit": limit}))
        return result

    # --- async ------------------------------------------------------------------------------

    async def ahealth(self) -> bool:
        return bool((await self._acall(("GET", "health", None, None))).get("ok"))

    async def areply(
        self,
        model: str | None,
        text: str | None = None,
        *,
        cached_input_tokens: int = 0,
        latency_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        tool_calls: Sequence[Mapping[str, Any]] | None = None,
        refusal: str | None = None,
    ) -> None:
        await self._acall(
            self._reply_op(
                model, text, cached_input_tokens, latency_s, chunk_delay_s, tool_calls, refusal
            )
        )

    async def aembedding_model(
        self, model: str, *, dimensions: int, takes_dimensions: bool | None = None
    ) -> None:
        await self._acall(self._embedding_model_op(model, dimensions, takes_dimensions))

    async def ascript(self, model: str, *faults: Fault | Mapping[str, Any]) -> None:
        await self._acall(
            ("POST", "script", {"model": model, "faults": _fault_dicts(faults)}, None)
        )

    async def ascript_next(self, *faults: Fault | Mapping[str, Any]) -> None:
        await self._acall(("POST", "script_next", {"faults": _fault_dicts(faults)}, None))

    async def afail_always(self, model: str, fault: Fault | Mapping[str, Any]) -> None:
        body = {"model": model, "fault": _fault_dicts((fault,))[0]}
        await self._acall(("POST", "fail_always", body, None))

    async def aheal(self, model: str | None = None) -> None:
        await self._acall(("POST", "heal", {"model": model} if model else {}, None))

    async def achaos(
        self,
        seed: int | str | None,
        rates: Mapping[str, float] | None = None,
        *,
        retry_after: float | None = 0.05,
        hang_s: float | None = None,
    ) -> None:
        await self._acall(self._chaos_op(seed, rates, retry_after, hang_s))

    async def astop_chaos(self) -> None:
        await self._acall(("POST", "stop_chaos", None, None))

    async def acounts(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._acall(self._counts_op(None, None))
        return result

    async def acount(self, model: str | None = None, protocol: str | None = None) -> int:
        return int((await self._acall(self._counts_op(model, protocol)))["count"])

    async def areset_counts(self) -> None:
        await self._acall(("POST", "reset", None, None))

    async def arequests(self, limit: int = 100) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._acall(
            ("GET", "requests", None, {"limit": limit})
        )
        return result


class UpstreamURLs:
    """The base URL each official client wants, for a fake at `url` (in-process or spawned)."""

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def ollama_base_url(self) -> str:
        return self.url

    @property
    def azure_endpoint(self) -> str:
        return self.url


class SpawnedFakeUpstream(UpstreamURLs):
    """A FakeUpstream in a child process (`python -m gateway.testing.fake_upstream`)."""

    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process = process
        self._url = url
        self.client = FakeUpstreamClient(url)

    @classmethod
    def start(
        cls, *, host: str = "127.0.0.1", port: int = 0, ready_timeout_s: float = 15.0
    ) -> SpawnedFakeUpstream:
        command = [
            sys.executable,
            "-m",
            "gateway.testing.fake_upstream",
            "--host",
            host,
            "--port",
            str(port),
        ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE)
        try:
            url = _wait_for_ready_line(process, ready_timeout_s)
        except BaseException:
            _stop(process, 5.0)
            raise
        return cls(process, url)

    @property
    def url(self) -> str:
        return self._url

    def terminate(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout_s`; the exit code."""
        return _stop(self.process, timeout_s)

    def __enter__(self) -> SpawnedFakeUpstream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"SpawnedFakeUpstream(url={self.url!r}, pid={self.process.pid})"


def _wait_for_ready_line(process: subprocess.Popen[bytes], timeout_s: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"FakeUpstream subprocess printed no {READY_PREFIX} line within {timeout_s} s"
            )
        readable, _, _ = select.select([process.stdout], [], [], remaining)
        if not readable:
            continue
        line = process.stdout.readline().decode(errors="replace").strip()
        if line.startswith(READY_PREFIX):
            return line.removeprefix(READY_PREFIX)
        if not line and process.poll() is not None:
            raise RuntimeError(
                f"FakeUpstream subprocess exited with code {process.returncode} before it was "
                "ready; its stderr is above"
            )


def _stop(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)
    if process.stdout is not None:
        process.stdout.close()
    return process.returncode
