"""Every example scenario with the real Qwen2.5-Coder-1.5B (deterministic: temperature 0,
seed 42): task success >= 90%, every must-transfer scenario transferred, and never an
undeclared action. Slow (minutes on 2 cores); skipped when the model is not installed.

    .venv/bin/python -m pytest tests/dialog/test_scenarios_real_model.py -s -m slow
"""

from __future__ import annotations

import io
import time
from datetime import date
from pathlib import Path

import pytest

import examples
from agentd.dialog.flows import (
    FlowRunner,
    ScenarioResult,
    crashed,
    engine_factory,
    load_scenarios,
    print_table,
)
from agentd.dialog.policy import LlmConfig, load_policy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

MODEL_ID = "qwen2.5-coder-1.5b-instruct-q4_k_m"
WEEK = date(2025, 3, 10)  # a fixed week: the same dates in data, prompts and outputs


class _DialogSection:
    def __init__(self, llm: LlmConfig) -> None:
        self.llm = llm


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[ScenarioResult]:
    from agentd.models import ModelStore
    from agentd.models.store import ModelMissingError

    try:
        ModelStore().require(MODEL_ID)
    except ModelMissingError:
        pytest.skip(f"model {MODEL_ID} not installed (agentd models fetch {MODEL_ID})")
    pytest.importorskip("llama_cpp")
    from agentd.dialog.agent import make_llm

    config = LlmConfig(model=MODEL_ID)
    llm = make_llm(config)
    base = tmp_path_factory.mktemp("examples")
    all_results: list[ScenarioResult] = []
    started = time.perf_counter()
    for name in examples.NAMES:
        # A seeded copy as the template; each scenario then runs on its own copy of its data.
        policy = load_policy(examples.prepare(name, base, start=WEEK))
        runner = FlowRunner(
            engine_factory(policy, llm, _DialogSection(config)),
            week_of=WEEK,
            timezone=policy.agent.timezone,
        )
        for scenario in load_scenarios([Path(examples.EXAMPLES_DIR) / name / "scenarios"]):
            try:
                all_results.append(runner.run(scenario))
            except Exception as exc:
                all_results.append(crashed(scenario, exc))
    table = io.StringIO()
    print_table(all_results, table, verbose=False)
    minutes = (time.perf_counter() - started) / 60
    print(f"\n{table.getvalue()}All {len(all_results)} scenarios took {minutes:.1f} min")
    return all_results


def test_task_success_at_least_90_percent(results: list[ScenarioResult]) -> None:
    passed = sum(r.passed for r in results)
    assert len(results) >= 30
    assert passed / len(results) >= 0.9, [
        (r.scenario.name, r.failures) for r in results if not r.passed
    ]


def test_every_must_transfer_scenario_transferred(results: list[ScenarioResult]) -> None:
    missed = [
        (r.scenario.name, r.transfer_to)
        for r in results
        if r.scenario.must_transfer and r.transfer_to != r.scenario.transfer_to
    ]
    assert not missed


def test_no_undeclared_action_ever(results: list[ScenarioResult]) -> None:
    assert sum(r.refused_replies for r in results) == 0
