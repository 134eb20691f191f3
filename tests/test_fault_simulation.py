"""Issue 15's fault simulation (bench/fault_simulation.py), reduced: the same seeded fault
traces replayed with the resilience defaults from before issue 15 and with today's.

Today's defaults must never cost callers more than the old ones did: on every scenario, no more
requests served after a failed call and no more requests lost. On the brown-outs, where the
consecutive count trips late or not at all, the rate rule must spare requests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # bench/ is a top-level folder of the repo, not an installed package
    sys.path.insert(0, str(REPO))

from bench import fault_simulation as sim  # noqa: E402
from gateway.policy import parse_policy  # noqa: E402

# Requests per run, per scenario: enough for each to go through its phases, small enough that
# the whole file runs in a few seconds (the slow provider's calls take wall-clock time).
REDUCED = {
    "flapping": 300,
    "hard outage": 300,
    "slow provider": 60,
    "occasional 429s": 300,
}
BROWNOUT_REQUESTS = 400
BROWNOUT_SEEDS = (1, 2, 3)


def test_the_old_policy_is_the_one_from_before_issue_15() -> None:
    old = sim.old_policy("http://127.0.0.1:1")
    for spec in old.providers.values():
        assert spec.timeout_s == 30
        assert spec.retry.attempts == 3
        assert spec.breaker.fail_max == 5
        assert spec.breaker.reset_timeout_s == 30
        assert spec.breaker.failure_rate is None
        assert spec.breaker.ramp_s is None
    # The new one is today's defaults: the same file with no resilience key set.
    new = sim.new_policy("http://127.0.0.1:1")
    defaults = parse_policy(
        "version: 1\nproviders: {x: {type: openai, api_key: k}}\ntasks: {default: {chain: [x]}}"
    )
    assert new.providers["primary"].breaker == defaults.providers["x"].breaker
    assert new.providers["primary"].retry == defaults.providers["x"].retry


def test_the_trace_depends_on_the_seed_only() -> None:
    for scenario in sim.SCENARIOS:
        assert sim.build_trace(scenario, 7, 120) == sim.build_trace(scenario, 7, 120)
        assert sim.build_trace(scenario, 7, 120) != sim.build_trace(scenario, 8, 120)


@pytest.mark.parametrize("scenario", list(REDUCED))
async def test_the_new_defaults_are_no_worse(scenario: str) -> None:
    [result] = await sim.simulate(seed=1, requests=REDUCED[scenario], scenarios=[scenario])
    old, new = result.old, result.new
    assert old.served + old.lost == new.served + new.lost == REDUCED[scenario]
    assert new.paid <= old.paid, sim.markdown_table([result])
    assert new.lost <= old.lost, sim.markdown_table([result])
    if scenario == "occasional 429s":  # the control: a healthy provider keeps its traffic
        assert new.opened == 0, sim.details_table([result])


@pytest.mark.parametrize("scenario", ["brown-out 50%", "brown-out 67%"])
async def test_on_a_brownout_the_new_defaults_spare_requests(scenario: str) -> None:
    paid = {"old": 0, "new": 0}
    for seed in BROWNOUT_SEEDS:
        [result] = await sim.simulate(seed=seed, requests=BROWNOUT_REQUESTS, scenarios=[scenario])
        assert result.new.paid <= result.old.paid, (seed, sim.markdown_table([result]))
        assert result.new.lost <= result.old.lost, (seed, sim.markdown_table([result]))
        paid["old"] += result.old.paid
        paid["new"] += result.new.paid
    if sim.new_policy("http://127.0.0.1:1").providers["primary"].breaker.failure_rate is None:
        # Without the rate rule by default, nothing differs from the old defaults here.
        assert paid["new"] == paid["old"], paid
    else:
        assert paid["new"] < paid["old"], paid


def test_the_table_has_a_row_per_scenario() -> None:
    run = sim.RunResult(requests=10, served=9, paid=3, lost=1)
    row = sim.ScenarioResult("flapping", "trace", run, sim.RunResult(10, 10, 1, 0))
    table = sim.markdown_table([row]).splitlines()
    assert table[0] == "| scenario | old: paid a failed call | new: paid | old: lost | new: lost |"
    assert table[2] == "| flapping | 3 | 1 | 1 | 0 |"
