"""Prometheus metrics: calls, outcomes, latencies, barge-ins, registration, errors.

`Metrics` owns its own `CollectorRegistry` (no process-global state) and implements the call
loop's observer (agentd.call.events.CallObserver), so the daemon fans call reports out to it
and to the records. SIP side: pass `metrics.registration_callback()` as the UserAgent's
`on_registration` and call `metrics.watch_user_agent(ua)`; `UaStats` counters are read at
scrape time. `start_http(address, port)` serves /metrics from a daemon thread.

Containment and transfer rates are derivable from `agentd_calls_total{outcome}`; they are also
exposed as ratio gauges for dashboards without PromQL.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agentd.records.model import OUTCOMES
from agentd.records.observer import summary_outcome
from agentd.sip.registration import RegistrationState, RegistrationStatus

if TYPE_CHECKING:
    from agentd.call.events import BargeInRecord, CallSummary, TurnRecord
    from agentd.config.schema import MetricsConfig
    from agentd.sip.ua import UserAgent

__all__ = ["ERROR_KINDS", "STAGES", "TURN_KINDS", "Metrics", "start_metrics"]

# Stages of a reply as TurnRecord reports them (ms), exposed in seconds.
STAGES: tuple[str, ...] = (
    "end_of_turn",
    "asr_final",
    "llm_first_token",
    "tts_first_chunk",
    "first_rtp",
    "first_audio",
    "first_content",
)
TURN_KINDS: tuple[str, ...] = ("greeting", "speech", "dtmf", "silence", "transfer_failed")
ERROR_KINDS: tuple[str, ...] = ("asr", "tts", "llm", "tool", "rtp", "transfer", "call", "record")
_MAX_ERROR_KINDS = 32  # a bug passing free text as the kind must not explode the series
_KIND = re.compile(r"[^a-z0-9_]+")
_MAX_TRACKED_CALLS = 4096
_RESPONSE_KINDS = ("speech", "dtmf")  # turns that answer the caller (not greeting/silence)

_LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
_STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
_HANDLE_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)
_STOP_BUCKETS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


class _UaStatsCollector(Collector):
    """Reads `UserAgent.stats` at scrape time (the UA only counts; we never copy)."""

    def __init__(self, ua: UserAgent) -> None:
        self._ua = ua

    def collect(self) -> Iterator[Metric]:
        stats = self._ua.stats
        answered = CounterMetricFamily("agentd_sip_calls_answered", "INVITEs answered with 200 OK.")
        answered.add_metric([], stats.calls_answered)
        rejected = CounterMetricFamily(
            "agentd_sip_calls_rejected", "INVITEs refused, by reason.", labels=["reason"]
        )
        rejected.add_metric(["untrusted"], stats.calls_rejected_untrusted)
        rejected.add_metric(["busy"], stats.calls_rejected_busy)
        rejected.add_metric(["media"], stats.calls_rejected_media)
        cancelled = CounterMetricFamily(
            "agentd_sip_calls_cancelled", "Calls cancelled by the caller before answer."
        )
        cancelled.add_metric([], stats.calls_cancelled)
        limited = CounterMetricFamily(
            "agentd_sip_requests_rate_limited", "Requests dropped by the per-source rate limit."
        )
        limited.add_metric([], stats.requests_rate_limited)
        bad = CounterMetricFamily(
            "agentd_sip_requests_rejected", "Malformed or refused SIP requests."
        )
        bad.add_metric([], stats.requests_rejected)
        yield from (answered, rejected, cancelled, limited, bad)

    def describe(self) -> Iterator[Metric]:
        return self.collect()


_C = TypeVar("_C", bound=Collector)


class _LlmCollector(Collector):
    """Reads the LLM's thread count and the other work it sees on the CPU at scrape time
    (agentd/dialog/cpu_share.py); backends without them (openai) export nothing."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def collect(self) -> Iterator[Metric]:
        threads = getattr(self._llm, "threads_now", None)
        if threads is not None:
            gauge = GaugeMetricFamily("agentd_llm_threads", "CPU threads the local LLM uses now.")
            gauge.add_metric([], threads)
            yield gauge
        others = getattr(self._llm, "others_busy_cores", None)
        if others is not None:
            gauge = GaugeMetricFamily(
                "agentd_cpu_others_busy_cores",
                "Cores' worth of CPU other processes used in the LLM's last sampling window.",
            )
            gauge.add_metric([], others)
            yield gauge

    def describe(self) -> Iterator[Metric]:
        return self.collect()


class Metrics:
    """The daemon's metrics; see the module docstring. Observer methods run on the event
    loop; scrapes run on the HTTP thread (prometheus_client's metrics are thread-safe)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.calls_active = Gauge("agentd_calls_active", "Calls in progress.", registry=r)
        self.calls_started = Counter(
            "agentd_calls_started", "Calls the agent answered.", registry=r
        )
        self.calls_ended = Counter(
            "agentd_calls", "Calls ended, by outcome.", ["outcome"], registry=r
        )
        self.containment_ratio = Gauge(
            "agentd_containment_ratio", "Contained calls / ended calls.", registry=r
        )
        self.transfer_ratio = Gauge(
            "agentd_transfer_ratio", "Transferred calls / ended calls.", registry=r
        )
        self.handle_seconds = Histogram(
            "agentd_call_handle_seconds", "Answer to hang-up.", buckets=_HANDLE_BUCKETS, registry=r
        )
        self.response_seconds = Histogram(
            "agentd_response_latency_seconds",
            "End of caller speech to first agent audio.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "agentd_turn_stage_seconds",
            "Reply stages (end of turn, ASR, LLM, TTS, audio), from the turn's reference "
            "instant as the call loop measures them.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.turns = Counter("agentd_turns", "Agent replies, by kind.", ["kind"], registry=r)
        self.barge_ins = Counter(
            "agentd_barge_ins", "Caller interruptions that cut the agent off.", registry=r
        )
        self.backchannels = Counter(
            "agentd_backchannels",
            "Caller sounds during agent speech that did not interrupt (uh-huh, noise).",
            registry=r,
        )
        self.barge_in_stop_seconds = Histogram(
            "agentd_barge_in_stop_seconds",
            "Caller speech confirmed to agent audio stopped.",
            buckets=_STOP_BUCKETS,
            registry=r,
        )
        self.tool_calls = Counter(
            "agentd_tool_calls", "Tool calls, by result.", ["result"], registry=r
        )
        self.registration_state = Gauge(
            "agentd_registration_state",
            "1 for the current SIP registration state.",
            ["state"],
            registry=r,
        )
        self.registration_failures = Gauge(
            "agentd_registration_failures", "Consecutive failed REGISTER attempts.", registry=r
        )
        self.errors = Counter("agentd_errors", "Errors, by kind.", ["kind"], registry=r)
        for outcome in OUTCOMES:
            self.calls_ended.labels(outcome)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for kind in TURN_KINDS:
            self.turns.labels(kind)
        for result in ("ok", "error"):
            self.tool_calls.labels(result)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        self._error_kinds: set[str] = set(ERROR_KINDS)
        self._ended: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._caller_turns: dict[str, int] = {}  # per active call
        self._detailed_tools: set[str] = set()  # calls whose turns reported tool calls
        self._lock = threading.Lock()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._watched: _UaStatsCollector | None = None
        self._watched_llm: _LlmCollector | None = None
        self.on_registration(RegistrationState(RegistrationStatus.UNREGISTERED))

    # ---- HTTP -------------------------------------------------------------------------------

    def start_http(self, address: str, port: int) -> int:
        """Serve /metrics on address:port (port 0: any free port); returns the bound port.
        Raises OSError when the port cannot be bound."""
        if self._server is not None:
            raise RuntimeError("metrics HTTP server already running")
        self._server, self._thread = start_http_server(port, address, registry=self.registry)
        return int(self._server.server_port)

    def stop_http(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    # ---- SIP --------------------------------------------------------------------------------

    def on_registration(self, state: RegistrationState) -> None:
        """Registration state changed (the UA's `on_registration` callback)."""
        for status in RegistrationStatus:
            self.registration_state.labels(status.value).set(1.0 if status is state.status else 0.0)
        self.registration_failures.set(state.failures)

    def registration_callback(
        self, then: Callable[[RegistrationState], None] | None = None
    ) -> Callable[[RegistrationState], None]:
        """A callback for `UserAgent(on_registration=...)`, chaining to `then` if given."""

        def callback(state: RegistrationState) -> None:
            self.on_registration(state)
            if then is not None:
                then(state)

        return callback

    def watch_user_agent(self, ua: UserAgent) -> None:
        """Export the UA's counters (read at scrape time) and its registration state now."""
        self._watched = self._replace_collector(self._watched, _UaStatsCollector(ua))
        self.on_registration(ua.registration_state)

    def watch_llm(self, llm: Any) -> None:
        """Export the LLM's thread count (read at scrape time); a reload's new LLM replaces
        the old one."""
        self._watched_llm = self._replace_collector(self._watched_llm, _LlmCollector(llm))

    def _replace_collector(self, old: Collector | None, new: _C) -> _C:
        """Register `new` in place of `old` (a re-wired source exports only its own values)."""
        if old is not None:
            self.registry.unregister(old)
        self.registry.register(new)
        return new

    # ---- errors -----------------------------------------------------------------------------

    def error(self, kind: str, call_ref: str | None = None) -> None:
        """Count an error of `kind` (a short fixed word: asr, tts, llm, tool, rtp, ...)."""
        label = _KIND.sub("_", str(kind).lower()).strip("_")[:32] or "other"
        with self._lock:
            if label not in self._error_kinds:
                if len(self._error_kinds) >= _MAX_ERROR_KINDS:
                    label = "other"
                else:
                    self._error_kinds.add(label)
        self.errors.labels(label).inc()

    # ---- the call loop's observer --------------------------------------------------------

    def call_started(self, call_ref: str, caller: str, at: float, **_: Any) -> None:
        with self._lock:
            if call_ref in self._caller_turns:
                return
            if len(self._caller_turns) >= _MAX_TRACKED_CALLS:
                return  # the loop is not finishing calls; don't grow without bound
            self._caller_turns[call_ref] = 0
            active = len(self._caller_turns)
        self.calls_started.inc()
        self.calls_active.set(active)

    def turn_finished(self, record: TurnRecord) -> None:
        self.turns.labels(record.kind).inc()
        with self._lock:
            if record.caller_text and record.call_ref in self._caller_turns:
                self._caller_turns[record.call_ref] += 1
        reported = {
            "end_of_turn": record.end_of_turn_ms,
            "asr_final": record.asr_final_ms,
            "first_audio": record.first_audio_ms,
            "first_content": record.first_content_ms,
        }
        for stage in STAGES:
            value = reported.get(stage, getattr(record, f"{stage}_ms", None))
            if value is not None and value >= 0:
                self.stage_seconds.labels(stage).observe(value / 1000.0)
        if record.kind in _RESPONSE_KINDS and record.first_audio_ms is not None:
            self.response_seconds.observe(max(0.0, record.first_audio_ms) / 1000.0)
        if record.kind == "transfer_failed":
            self.error("transfer", record.call_ref)
        detailed = getattr(record, "tool_calls", None)
        if detailed:
            with self._lock:
                self._detailed_tools.add(record.call_ref)
            self._count_tools(detailed)

    def barge_in(self, record: BargeInRecord) -> None:
        if record.resumed:
            self.backchannels.inc()
            return
        self.barge_ins.inc()
        if record.stop_ms >= 0:
            self.barge_in_stop_seconds.observe(record.stop_ms / 1000.0)

    def call_finished(self, summary: CallSummary) -> None:
        ref = summary.call_ref
        with self._lock:
            caller_turns = self._caller_turns.pop(ref, 0)
            detailed = ref in self._detailed_tools
            self._detailed_tools.discard(ref)
            active = len(self._caller_turns)
        outcome = summary_outcome(summary, caller_turns)
        self.calls_active.set(active)
        self.calls_ended.labels(outcome).inc()
        if outcome == "failed":
            self.error("call", ref)
        handle = summary.ended_at - summary.started_at
        if handle >= 0:
            self.handle_seconds.observe(handle)
        if summary.handoff is not None and not detailed:
            self._count_tools(summary.handoff.tool_calls)
        with self._lock:
            self._ended[outcome] += 1
            total = sum(self._ended.values())
            contained, transferred = self._ended["contained"], self._ended["transferred"]
        self.containment_ratio.set(contained / total)
        self.transfer_ratio.set(transferred / total)

    def _count_tools(self, calls: Any) -> None:
        for call in calls:
            ok = bool(getattr(call, "ok", False))
            self.tool_calls.labels("ok" if ok else "error").inc()
            if not ok:
                self.error("tool")


def start_metrics(config: MetricsConfig) -> Metrics | None:
    """Metrics served as the `metrics:` config says; None when off (port 0).
    Raises OSError when the port cannot be bound."""
    if config.port == 0:
        return None
    metrics = Metrics()
    metrics.start_http(config.address, config.port)
    return metrics
