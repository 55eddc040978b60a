"""Random fault scenarios against the OTA path, each checked against the invariants
(tests/reliability/scenarios.py). CI runs NHLINK_SCENARIOS (default 200) seeds; set it higher
for a longer campaign, or NHLINK_SCENARIO_SEEDS=7,42 to replay particular seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .scenarios import Scenario, run, violations


def _seeds() -> list[int]:
    chosen = os.environ.get("NHLINK_SCENARIO_SEEDS")
    if chosen:
        return [int(s) for s in chosen.split(",") if s.strip()]
    return list(range(int(os.environ.get("NHLINK_SCENARIOS", "200"))))


@pytest.mark.parametrize("seed", _seeds())
async def test_scenario(seed: int, tmp_path: Path) -> None:
    scenario = Scenario.draw(seed)
    outcome = await run(scenario, tmp_path)
    problems = violations(outcome)
    assert not problems, (
        f"seed {seed} (replay: NHLINK_SCENARIO_SEEDS={seed}) broke invariants: {problems}\n"
        f"scenario: {scenario}\noutcome: status={outcome.status} reason={outcome.reason!r} "
        f"heard={outcome.heard} served={outcome.served} interruptions={outcome.interruptions}"
    )
