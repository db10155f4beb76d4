"""Metrics: served over loopback HTTP, and values move when the call loop reports."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentd.call.events import BargeInRecord, CallSummary, TurnRecord
from agentd.dialog.types import HandoffRecord, ToolCallRecord
from agentd.metrics import Metrics
from agentd.sip.registration import RegistrationState, RegistrationStatus
from agentd.sip.ua import UaStats

EXPECTED = {
    "agentd_calls_active",
    "agentd_calls_started_total",
    "agentd_calls_total",
    "agentd_containment_ratio",
    "agentd_transfer_ratio",
    "agentd_call_handle_seconds_count",
    "agentd_response_latency_seconds_count",
    "agentd_turn_stage_seconds_count",
    "agentd_barge_ins_total",
    "agentd_backchannels_total",
    "agentd_barge_in_stop_seconds_count",
    "agentd_registration_state",
    "agentd_registration_failures",
    "agentd_errors_total",
    "agentd_tool_calls_total",
    "agentd_turns_total",
}


@pytest.fixture
def served() -> Iterator[tuple[Metrics, int]]:
    metrics = Metrics()
    port = metrics.start_http("127.0.0.1", 0)
    try:
        yield metrics, port
    finally:
        metrics.stop_http()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples[(name, tuple(sorted(labels.items())))]


def turn(
    ref: str,
    index: int,
    kind: str = "speech",
    caller: str = "hi",
    first_audio: float | None = 600.0,
    tools: tuple[ToolCallRecord, ...] | None = None,
) -> TurnRecord:
    record = TurnRecord(
        ref,
        index,
        kind,
        caller,
        None,
        100.0,
        200.0,
        50.0,  # type: ignore[arg-type]
        first_audio,
        900.0,
        (),
        "ok",
        "ok",
        False,
    )
    if tools is not None:
        object.__setattr__(record, "tool_calls", tools)  # a loop that details its tools
    return record


def summary(
    ref: str,
    seconds: float,
    transferred_to: str | None = None,
    end_reason: str = "remote hangup",
    tools: tuple[ToolCallRecord, ...] = (),
) -> CallSummary:
    handoff = HandoffRecord(ref, "1001", "s", None, (), {}, tools)
    return CallSummary(
        ref, "1001", 100.0, 100.0 + seconds, end_reason, 2, 0, 0, transferred_to, handoff
    )


def test_endpoint_serves_expected_names_over_loopback(served: tuple[Metrics, int]) -> None:
    _, port = served
    names = {name for name, _ in scrape(port)}
    assert EXPECTED <= names
    samples = scrape(port)
    for outcome in ("contained", "transferred", "abandoned", "failed"):
        assert value(samples, "agentd_calls_total", outcome=outcome) == 0
    assert value(samples, "agentd_registration_state", state="unregistered") == 1


def test_values_move_with_the_call_loop(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    metrics.call_started("a", "1001", 100.0)
    metrics.call_started("b", "1002", 100.0)
    assert value(scrape(port), "agentd_calls_active") == 2
    metrics.turn_finished(turn("a", 0, "greeting", caller="", first_audio=300.0))
    metrics.turn_finished(turn("a", 1))
    metrics.turn_finished(turn("a", 2, "dtmf", caller="1", first_audio=400.0))
    metrics.barge_in(BargeInRecord("a", 101.0, 60.0, False, "stop"))
    metrics.barge_in(BargeInRecord("a", 102.0, 40.0, True, "uh-huh"))
    failed_tool = ToolCallRecord("book", {}, False, None, "down", 5.0)
    metrics.call_finished(summary("a", 60.0, tools=(failed_tool,)))
    metrics.call_finished(summary("b", 30.0, transferred_to="reception"))
    samples = scrape(port)
    assert value(samples, "agentd_calls_active") == 0
    assert value(samples, "agentd_calls_started_total") == 2
    assert value(samples, "agentd_calls_total", outcome="contained") == 1
    assert value(samples, "agentd_calls_total", outcome="transferred") == 1
    assert value(samples, "agentd_containment_ratio") == 0.5
    assert value(samples, "agentd_transfer_ratio") == 0.5
    assert value(samples, "agentd_call_handle_seconds_count") == 2
    assert value(samples, "agentd_call_handle_seconds_sum") == 90
    # greeting is not a response to the caller; speech and dtmf are
    assert value(samples, "agentd_response_latency_seconds_count") == 2
    assert value(samples, "agentd_response_latency_seconds_sum") == pytest.approx(1.0)
    assert value(samples, "agentd_response_latency_seconds_bucket", le="0.6") == 2
    assert value(samples, "agentd_turn_stage_seconds_count", stage="end_of_turn") == 3
    assert value(samples, "agentd_turn_stage_seconds_sum", stage="asr_final") == (
        pytest.approx(0.15)
    )
    assert value(samples, "agentd_barge_ins_total") == 1
    assert value(samples, "agentd_backchannels_total") == 1
    assert value(samples, "agentd_barge_in_stop_seconds_sum") == pytest.approx(0.06)
    assert value(samples, "agentd_tool_calls_total", result="error") == 1
    assert value(samples, "agentd_errors_total", kind="tool") == 1
    assert value(samples, "agentd_turns_total", kind="speech") == 1


def test_outcomes_failed_and_abandoned(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    metrics.call_started("x", "1", 100.0)
    metrics.call_finished(summary("x", 3.0))  # no caller turn: abandoned
    metrics.call_started("y", "1", 100.0)
    metrics.turn_finished(turn("y", 1))
    metrics.call_finished(summary("y", 9.0, end_reason="error: tts crashed"))
    metrics.turn_finished(turn("z", 1, "transfer_failed"))
    samples = scrape(port)
    assert value(samples, "agentd_calls_total", outcome="abandoned") == 1
    assert value(samples, "agentd_calls_total", outcome="failed") == 1
    assert value(samples, "agentd_errors_total", kind="call") == 1
    assert value(samples, "agentd_errors_total", kind="transfer") == 1
    assert value(samples, "agentd_containment_ratio") == 0


def test_tools_detailed_per_turn_are_not_counted_twice(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    ok = ToolCallRecord("find", {}, True, {}, None, 5.0)
    metrics.call_started("a", "1", 100.0)
    metrics.turn_finished(turn("a", 1, tools=(ok,)))
    metrics.call_finished(summary("a", 10.0, tools=(ok,)))
    assert value(scrape(port), "agentd_tool_calls_total", result="ok") == 1


def test_error_kinds_are_bounded(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    metrics.error("ASR")
    metrics.error("Weird Thing!")
    for n in range(100):
        metrics.error(f"kind{n}")
    samples = scrape(port)
    assert value(samples, "agentd_errors_total", kind="asr") == 1
    assert value(samples, "agentd_errors_total", kind="weird_thing") == 1
    kinds = {dict(labels)["kind"] for name, labels in samples if name == "agentd_errors_total"}
    assert len(kinds) <= 33 and value(samples, "agentd_errors_total", kind="other") > 0


@dataclass
class FakeUa:
    stats: UaStats = field(default_factory=UaStats)
    registration_state: RegistrationState = field(
        default_factory=lambda: RegistrationState(RegistrationStatus.REGISTERING)
    )


def test_user_agent_wiring(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    seen: list[RegistrationState] = []
    callback = metrics.registration_callback(then=seen.append)
    ua = FakeUa()
    metrics.watch_user_agent(ua)  # type: ignore[arg-type]
    samples = scrape(port)
    assert value(samples, "agentd_registration_state", state="registering") == 1
    assert value(samples, "agentd_registration_state", state="unregistered") == 0
    ua.stats.calls_answered = 4
    ua.stats.calls_rejected_busy = 2
    failing = RegistrationState(RegistrationStatus.FAILING, "401", failures=3)
    callback(failing)
    samples = scrape(port)
    assert seen == [failing]
    assert value(samples, "agentd_registration_state", state="failing") == 1
    assert value(samples, "agentd_registration_state", state="registering") == 0
    assert value(samples, "agentd_registration_failures") == 3
    assert value(samples, "agentd_sip_calls_answered_total") == 4
    assert value(samples, "agentd_sip_calls_rejected_total", reason="busy") == 2
    metrics.watch_user_agent(FakeUa())  # type: ignore[arg-type]  # re-wiring replaces
    assert value(scrape(port), "agentd_sip_calls_answered_total") == 0


def test_instances_share_nothing() -> None:
    first, second = Metrics(), Metrics()
    first.call_started("a", "1", 0.0)
    assert first.registry is not second.registry
    assert second.registry.get_sample_value("agentd_calls_started_total") == 0
    assert first.registry.get_sample_value("agentd_calls_started_total") == 1


def test_port_in_use_raises_oserror(served: tuple[Metrics, int]) -> None:
    _, port = served
    with pytest.raises(OSError):
        Metrics().start_http("127.0.0.1", port)


def test_start_metrics_from_config() -> None:
    from agentd.config.schema import MetricsConfig
    from agentd.metrics import start_metrics

    assert start_metrics(MetricsConfig()) is None  # port 0: off
    with socket.socket() as probe:  # find a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics = start_metrics(MetricsConfig(port=port))
    assert metrics is not None
    try:
        assert ("agentd_calls_active", ()) in scrape(port)
    finally:
        metrics.stop_http()


class FakeLlm:
    """What the LLM collector reads (LlamaBackend's names)."""

    threads_now = 2
    others_busy_cores: float | None = 0.1


def test_llm_threads_are_read_at_scrape_time(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    assert "agentd_llm_threads" not in {name for name, _ in scrape(port)}
    llm = FakeLlm()
    metrics.watch_llm(llm)
    assert value(scrape(port), "agentd_llm_threads") == 2
    llm.threads_now, llm.others_busy_cores = 1, 1.2  # another process took a core
    samples = scrape(port)
    assert value(samples, "agentd_llm_threads") == 1
    assert value(samples, "agentd_cpu_others_busy_cores") == 1.2
    metrics.watch_llm(object())  # a reload to a backend without threads (openai)
    names = {name for name, _ in scrape(port)}
    assert "agentd_llm_threads" not in names and "agentd_cpu_others_busy_cores" not in names
