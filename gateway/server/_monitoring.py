"""What the monitoring, policy and health routes report, built from the router's live state."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, Field

from gateway._outcomes import BreakerState
from gateway._runtime import Candidate
from gateway.policy import DEFAULT_TASK, Policy
from gateway.providers import LLMFactory


class ProviderStatus(BaseModel):
    type: str
    model: str | None
    available: bool
    reason: str | None = Field(description="Why the provider cannot be used, when it cannot.")


class ProvidersReport(BaseModel):
    available_providers: list[str] = Field(
        description="Provider types whose SDK is installed (LLMFactory.available_providers())."
    )
    current_provider: str | None = Field(
        description="The first available provider of the `default` task's chain (else of the "
        "first task's): where a request goes when nothing fails."
    )
    providers: dict[str, ProviderStatus] = Field(description="Every provider in the policy.")


class BreakerStatus(BaseModel):
    state: BreakerState
    failure_count: int
    seconds_until_probe: float | None = Field(
        description="Seconds until an open breaker lets one trial call through; null unless open."
    )


class BreakersReport(BaseModel):
    breakers: dict[str, BreakerStatus]


class OrderedCandidate(BaseModel):
    provider: str
    type: str
    model: str
    available: bool = Field(
        description="Configured: its client is built (key set, package installed). Says "
        "nothing of whether the upstream answers; the breaker does."
    )
    unavailable_reason: str | None = Field(description="Why it is not configured, when not.")
    breaker: BreakerState
    in_flight: int
    latency_ewma_s: float | None = Field(
        description="The whole-answer latency estimate (strategy fastest), when measured."
    )
    first_token_s: float | None = Field(
        None, description="The time-to-first-token estimate for streams, when measured."
    )
    ramp_share: float | None = Field(
        None, description="Slow start: the share of first picks it keeps now, while ramping."
    )
    input_usd_per_mtok: float | None
    output_usd_per_mtok: float | None


class TaskOrderReport(BaseModel):
    task: str = Field(description="The task routed: the one asked for, else `default`.")
    strategy: str
    policy_sha256: str
    stop_on: list[str] = Field(
        default_factory=list, description="Error kinds that end a request at once."
    )
    redirect: dict[str, str] = Field(
        default_factory=dict,
        description="Error kind -> the task whose chain takes a request over on it.",
    )
    order: list[OrderedCandidate] = Field(
        description="The candidates a request would try now, in order, with their live state "
        "(`gateway explain --server` shows this)."
    )


class PolicyReport(BaseModel):
    sha256: str
    loaded_at: float = Field(description="Unix time the serving policy was loaded.")
    source: str
    policy: dict[str, Any] = Field(description="The policy in effect; API keys shown as ***.")


class ReloadReport(BaseModel):
    applied: bool = Field(description="False when the file is unchanged (same sha256).")
    sha256: str
    loaded_at: float


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    pid: int = Field(default_factory=os.getpid)


class Readiness(BaseModel):
    ready: bool
    reasons: list[str] = Field(description="Why the server is not ready; empty when it is.")
    policy_sha256: str | None = None


def providers_report(policy: Policy, candidates: dict[str, Candidate]) -> ProvidersReport:
    providers = {
        name: ProviderStatus(
            type=c.spec.type,
            model=c.model or None,
            available=c.client is not None,
            reason=c.unavailable_reason,
        )
        for name, c in candidates.items()
    }
    return ProvidersReport(
        available_providers=LLMFactory.available_providers(),
        current_provider=_current_provider(policy, candidates),
        providers=providers,
    )


def _current_provider(policy: Policy, candidates: dict[str, Candidate]) -> str | None:
    task = policy.tasks.get(DEFAULT_TASK) or next(iter(policy.tasks.values()), None)
    if task is None:
        return None
    for entry in task.chain:
        candidate = candidates.get(entry.provider)
        if candidate is not None and candidate.client is not None:
            return candidate.name
    return None


def breakers_report(candidates: dict[str, Candidate]) -> BreakersReport:
    breakers: dict[str, BreakerStatus] = {}
    for name, c in candidates.items():
        wait = c.breaker.seconds_until_probe()
        breakers[name] = BreakerStatus(
            state=c.breaker.state,
            failure_count=c.breaker.failure_count,
            seconds_until_probe=None if wait is None else round(wait, 3),
        )
    return BreakersReport(breakers=breakers)


def task_order_report(policy: Policy, task: str, rows: list[dict[str, Any]]) -> TaskOrderReport:
    """`rows` is `Router.explain(task)`."""
    spec = policy.task(task)
    return TaskOrderReport(
        task=spec.name,
        strategy=spec.strategy,
        policy_sha256=policy.sha256,
        stop_on=sorted(kind.value for kind in spec.stop_on),
        redirect={kind.value: target for kind, target in spec.redirect},
        order=[OrderedCandidate.model_validate(row) for row in rows],
    )


def policy_report(policy: Policy) -> PolicyReport:
    return PolicyReport(
        sha256=policy.sha256,
        loaded_at=policy.loaded_at,
        source=policy.source,
        policy=policy.masked(),
    )


def readiness(policy: Policy | None, candidates: dict[str, Candidate]) -> Readiness:
    """Ready when a policy is loaded and each task can reach at least one built provider.

    Breaker states do not count: an upstream outage would otherwise mark every replica
    unready at once, and the load balancer would drop them all.
    """
    if policy is None:
        return Readiness(ready=False, reasons=["no policy is loaded"])
    reasons: list[str] = []
    if not policy.tasks:
        reasons.append("the policy defines no tasks")
    for name, task in policy.tasks.items():
        usable = [
            e.provider
            for e in task.chain
            if (c := candidates.get(e.provider)) is not None and c.client is not None
        ]
        if not usable:
            why = "; ".join(
                f"{e.provider}: {_reason(candidates.get(e.provider))}" for e in task.chain
            )
            reasons.append(f"task {name!r} has no available provider ({why})")
    return Readiness(ready=not reasons, reasons=reasons, policy_sha256=policy.sha256)


def _reason(candidate: Candidate | None) -> str:
    if candidate is None:
        return "not defined"
    return candidate.unavailable_reason or "unavailable"
