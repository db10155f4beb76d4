"""`agentd test-flows -c config.yaml DIR`: scripted caller conversations against the real
policy, tools and LLM, checked against what should have happened.

A scenario file (YAML):

    name: reschedule after identity check
    caller_id: "+447700900102"          # optional
    now: "tuesday 10:00"                # optional: weekday HH:MM of the run's week, or ISO
    turns:                              # caller lines; or {dtmf: "0"}, {text:, confidence:},
      - Hi, I need to move my appointment.          # {silence: true}
      - James O'Connor, 14th of February 1979
    expect:
      tools: [verify_identity, {find_slots: {day: friday}}]   # called (argument subset)
      transfer_to: front_desk            # a target name, or null: must not transfer
      ended: false                       # whether the agent ended the call
      reply_contains: [Friday]           # substrings of any agent line (case-insensitive)

Every scenario runs on a fresh copy of the policy's data files in a temp dir, so a booking
in one cannot leak into the next; webhook tools and the hand-off webhook are stubbed unless
asked for (`live_webhooks`), so a test run never texts a customer.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import yaml

from agentd.dialog.agent import DialogEngine, DialogSession
from agentd.dialog.types import (
    DialogEvent,
    EndCall,
    JsonDict,
    Say,
    ToolContext,
    ToolFinished,
    TransferRequested,
)

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DEFAULT_NOW = "monday 10:00"
SECONDS_PER_TURN = 15  # the scenario clock moves on like a real call
FLOW_GENERATE_TIMEOUT_S = 900.0  # a cold prompt on a busy 2-core box is slow, not broken


class ScenarioError(ValueError):
    """A scenario file is malformed (the message names the file and the problem)."""


@dataclass(frozen=True)
class ToolExpectation:
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Turn:
    text: str = ""
    dtmf: bool = False
    silence: bool = False
    confidence: float | None = None


_UNSET: Any = object()


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path | None
    turns: tuple[Turn, ...]
    caller_id: str | None = None
    now: str = DEFAULT_NOW
    tools: tuple[ToolExpectation, ...] = ()
    transfer_to: Any = _UNSET  # str | None when given
    ended: bool | None = None
    reply_contains: tuple[str, ...] = ()

    @property
    def must_transfer(self) -> bool:
        return isinstance(self.transfer_to, str)


@dataclass
class ScenarioResult:
    scenario: Scenario
    failures: list[str]
    agent_lines: list[str]
    tools_called: list[tuple[str, JsonDict, bool]]
    transfer_to: str | None
    ended: str | None
    turns_used: int
    refused_replies: int
    seconds: float
    handoff: JsonDict | None = None

    @property
    def passed(self) -> bool:
        return not self.failures


# ---- loading -------------------------------------------------------------------------------


def load_scenarios(paths: Iterable[Path | str]) -> list[Scenario]:
    """Scenario files from files and directories (``*.yaml``/``*.yml``, sorted)."""
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
        elif path.is_file():
            files.append(path)
        else:
            raise ScenarioError(f"{path}: no such file or directory")
    return [parse_scenario(p.read_text(encoding="utf-8"), p) for p in files]


def parse_scenario(text: str, path: Path | None = None) -> Scenario:
    where = str(path) if path is not None else "<scenario>"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{where}: YAML error: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{where}: expected a mapping with name, turns, expect")
    unknown = sorted(set(data) - {"name", "caller_id", "now", "turns", "expect", "notes"})
    if unknown:
        raise ScenarioError(f"{where}: unknown key {unknown[0]!r}")
    turns = data.get("turns")
    if not isinstance(turns, list) or not turns:
        raise ScenarioError(f"{where}: turns: expected a non-empty list of caller lines")
    expect = data.get("expect") or {}
    if not isinstance(expect, dict):
        raise ScenarioError(f"{where}: expect: expected a mapping")
    unknown = sorted(set(expect) - {"tools", "transfer_to", "ended", "reply_contains"})
    if unknown:
        raise ScenarioError(f"{where}: expect: unknown key {unknown[0]!r}")
    now = str(data.get("now") or DEFAULT_NOW)
    try:
        scenario_time(now, date(2025, 3, 10), "UTC")
    except ValueError as exc:
        raise ScenarioError(f"{where}: now: {exc}") from None
    ended = expect.get("ended")
    if ended is not None and not isinstance(ended, bool):
        raise ScenarioError(f"{where}: expect.ended: expected true or false")
    caller_id = data.get("caller_id")
    return Scenario(
        name=str(data.get("name") or (path.stem if path is not None else "scenario")),
        path=path,
        turns=tuple(_turn(item, where, i) for i, item in enumerate(turns)),
        caller_id=None if caller_id is None else str(caller_id),
        now=now,
        tools=tuple(_tool_expectation(item, where) for item in expect.get("tools") or ()),
        transfer_to=expect["transfer_to"] if "transfer_to" in expect else _UNSET,
        ended=ended,
        reply_contains=tuple(str(s) for s in expect.get("reply_contains") or ()),
    )


def _turn(item: Any, where: str, index: int) -> Turn:
    if isinstance(item, str | int | float) and not isinstance(item, bool):
        return Turn(text=str(item))
    if isinstance(item, dict):
        if "dtmf" in item:
            return Turn(text=str(item["dtmf"]), dtmf=True)
        if item.get("silence"):
            return Turn(silence=True)
        if "text" in item:
            confidence = item.get("confidence")
            if confidence is not None and not isinstance(confidence, int | float):
                raise ScenarioError(f"{where}: turns[{index}].confidence: expected a number")
            return Turn(text=str(item["text"]), confidence=confidence)
    raise ScenarioError(
        f"{where}: turns[{index}]: expected text, {{dtmf: ...}}, {{text: ..., confidence: ...}}"
        " or {silence: true}"
    )


def _tool_expectation(item: Any, where: str) -> ToolExpectation:
    if isinstance(item, str):
        return ToolExpectation(item)
    if isinstance(item, dict) and len(item) == 1:
        (name, arguments), = item.items()
        if arguments is None:
            arguments = {}
        if isinstance(arguments, dict):
            return ToolExpectation(str(name), arguments)
    raise ScenarioError(f"{where}: expect.tools: expected a name or {{name: {{arg: value}}}}")


def scenario_time(spec: str, week_of: date, timezone: str) -> datetime:
    """`weekday HH:MM` in the week of `week_of` (its Monday), or an ISO datetime; aware."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(timezone)
    match = re.fullmatch(r"\s*([a-z]+)\s+(\d{1,2}):(\d{2})\s*", spec.lower())
    if match and match.group(1) in WEEKDAYS:
        monday = week_of - timedelta(days=week_of.weekday())
        day = monday + timedelta(days=WEEKDAYS.index(match.group(1)))
        hour, minute = int(match.group(2)), int(match.group(3))
        if hour > 23 or minute > 59:
            raise ValueError(f"bad time {spec!r}")
        return datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
    try:
        moment = datetime.fromisoformat(spec.strip())
    except ValueError:
        raise ValueError(f"expected 'weekday HH:MM' or an ISO datetime, got {spec!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


# ---- running -------------------------------------------------------------------------------


class StubWebhook:
    """Stands in for a webhook tool in test runs: records the call, answers ok."""

    def __init__(self, tool: Any) -> None:
        self.name = tool.name
        self.description = tool.description
        self.parameters = tool.parameters
        self.confirm = tool.confirm
        self.calls: list[JsonDict] = []

    def run(self, arguments: JsonDict, context: ToolContext) -> JsonDict:
        self.calls.append(dict(arguments))
        return {"ok": True, "status": "sent"}


EngineFactory = Callable[[Scenario, Path, datetime], DialogEngine]


@dataclass
class FlowRunner:
    """Runs scenarios, each with an engine from `make_engine(scenario, tmp_dir, now)`."""

    make_engine: EngineFactory
    week_of: date
    timezone: str = "UTC"

    def run(self, scenario: Scenario) -> ScenarioResult:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="agentd-flow-") as tmp:
            now = scenario_time(scenario.now, self.week_of, self.timezone)
            clock = _SteppingClock(now)
            engine = self.make_engine(scenario, Path(tmp), now)
            engine.now = clock
            session = engine.new_session(caller_id=scenario.caller_id, call_ref=_ref(scenario))
            events = list(session.opening())
            used = 0
            for turn in scenario.turns:
                if session.finished:
                    break
                used += 1
                clock.advance(SECONDS_PER_TURN)
                if turn.silence:
                    events += session.silence()
                else:
                    events += session.turn(turn.text, confidence=turn.confidence, dtmf=turn.dtmf)
            return _judge(scenario, session, events, used, time.perf_counter() - started)


class _SteppingClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _ref(scenario: Scenario) -> str:
    return re.sub(r"[^a-z0-9]+", "-", scenario.name.lower()).strip("-")[:40] or "scenario"


def _judge(
    scenario: Scenario,
    session: DialogSession,
    events: list[DialogEvent],
    used: int,
    seconds: float,
) -> ScenarioResult:
    lines = [e.text for e in events if isinstance(e, Say)]
    calls = [(e.record.name, e.record.arguments, e.record.ok) for e in events
             if isinstance(e, ToolFinished)]  # fmt: skip
    transfers = [e for e in events if isinstance(e, TransferRequested)]
    ends = [e for e in events if isinstance(e, EndCall)]
    transfer_to = transfers[-1].target if transfers else None
    failures: list[str] = []
    for expected in scenario.tools:
        if not any(name == expected.name and _subset(expected.arguments, args)
                   for name, args, _ok in calls):  # fmt: skip
            wanted = expected.name + (f" {dict(expected.arguments)}" if expected.arguments else "")
            got = ", ".join(f"{n}{a}" for n, a, _ in calls) or "none"
            failures.append(f"tool {wanted} not called (called: {got})")
    if scenario.transfer_to is not _UNSET and scenario.transfer_to != transfer_to:
        failures.append(f"transfer to {scenario.transfer_to!r} expected, got {transfer_to!r}")
    if scenario.ended is not None and scenario.ended != bool(ends):
        failures.append("call should have ended" if scenario.ended else "call ended unexpectedly")
    spoken = " ".join(lines).lower()
    for needle in scenario.reply_contains:
        if needle.lower() not in spoken:
            failures.append(f"no reply contains {needle!r}")
    if session.stats.refused_replies:
        failures.append(f"{session.stats.refused_replies} model repl(ies) refused by the schema")
    return ScenarioResult(
        scenario=scenario,
        failures=failures,
        agent_lines=lines,
        tools_called=calls,
        transfer_to=transfer_to,
        ended=ends[-1].reason if ends else None,
        turns_used=used,
        refused_replies=session.stats.refused_replies,
        seconds=seconds,
        handoff=session.handoff(session.ended).to_json(),
    )


def crashed(scenario: Scenario, exc: BaseException) -> ScenarioResult:
    return ScenarioResult(
        scenario=scenario,
        failures=[f"crashed: {type(exc).__name__}: {exc}"],
        agent_lines=[],
        tools_called=[],
        transfer_to=None,
        ended=None,
        turns_used=0,
        refused_replies=0,
        seconds=0.0,
    )


def _subset(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    return all(key in actual and _same(value, actual[key]) for key, value in expected.items())


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, str) or isinstance(actual, str):
        return " ".join(str(expected).lower().split()) == " ".join(str(actual).lower().split())
    return bool(expected == actual)


# ---- engines for the CLI ------------------------------------------------------------------


def copy_data(policy: Any, dest: Path) -> Any:
    """The policy with every database/records file copied into `dest` (fresh per run)."""
    mapping: dict[Path, Path] = {}
    for index, source in enumerate(policy.data_files()):
        target = dest / f"{index}-{source.name}"
        shutil.copy2(source, target)
        mapping[source] = target
    tools = {
        name: spec.model_copy(
            update={
                key: mapping[getattr(spec, key)]
                for key in ("database", "records")
                if getattr(spec, key) is not None and getattr(spec, key) in mapping
            }
        )
        for name, spec in policy.tools.items()
    }
    copied = policy.model_copy(update={"tools": tools})
    copied._source = policy.source
    return copied


def _example_preparer(policy: Any) -> Callable[[Path, date], Path] | None:
    """For the bundled examples (a seed.py beside policy.yaml inside the `examples`
    package), rebuild the data for the run's week; None for other policies."""
    source = policy.source
    if source is None or not (source.parent / "seed.py").is_file():
        return None
    package = source.parent.parent
    if not (package / "__init__.py").is_file() or package.name != "examples":
        return None
    if str(package.parent) not in sys.path:
        sys.path.insert(0, str(package.parent))
    try:
        import examples
    except ImportError:
        return None
    if Path(examples.EXAMPLES_DIR).resolve() != package.resolve():
        return None
    name = source.parent.name

    def prepare(tmp: Path, week_of: date) -> Path:
        return Path(examples.prepare(name, tmp, start=week_of))

    return prepare


def engine_factory(
    policy: Any, llm: Any, dialog_config: Any, *, live_webhooks: bool = False
) -> EngineFactory:
    """Engines sharing one LLM, each on fresh data (stub webhooks unless `live_webhooks`)."""
    from agentd.dialog.agent import make_handoff_poster
    from agentd.dialog.policy import load_policy
    from agentd.dialog.tools.registry import build_tools

    prepare_example = _example_preparer(policy)

    def make(scenario: Scenario, tmp: Path, now: datetime) -> DialogEngine:
        if prepare_example is not None:
            fresh = load_policy(prepare_example(tmp, now.date()))
        else:
            fresh = copy_data(policy, tmp)
        tools = build_tools(fresh)
        if not live_webhooks:
            stub_webhooks_of(fresh, tools)
        return DialogEngine(
            fresh,
            llm,
            tools,
            max_tokens=dialog_config.llm.max_tokens,
            context_chars=dialog_config.llm.context_tokens * 3,
            handoff_poster=make_handoff_poster(fresh) if live_webhooks else None,
            generate_timeout_s=FLOW_GENERATE_TIMEOUT_S,
        )

    return make


def stub_webhooks_of(policy: Any, tools: dict[str, Any]) -> None:
    """Replace the policy's webhook tools in `tools` with recording stubs."""
    for name, spec in policy.tools.items():
        if spec.webhook is not None and name in tools:
            tools[name] = _stub_keeping_guard(tools[name])


def _stub_keeping_guard(tool: Any) -> Any:
    inner = getattr(tool, "tool", None)
    if inner is not None and hasattr(tool, "requires"):
        tool.tool = StubWebhook(inner)  # keep the RequiresGuard around the stub
        return tool
    return StubWebhook(tool)


# ---- the table -----------------------------------------------------------------------------


def print_table(results: Sequence[ScenarioResult], out: TextIO, *, verbose: bool = False) -> None:
    width = max([len(r.scenario.name) for r in results] + [8])
    width = min(width, 48)
    out.write(f"{'#':>3}  {'result':6}  {'scenario':{width}}  {'turns':>5}  {'outcome':24}  "
              f"{'time':>7}  tools\n")  # fmt: skip
    for i, result in enumerate(results, 1):
        outcome = (
            f"transfer {result.transfer_to}" if result.transfer_to
            else f"ended ({_clip(result.ended, 16)})" if result.ended
            else "open"
        )  # fmt: skip
        tools = ", ".join(f"{n}{'' if ok else '!'}" for n, _a, ok in result.tools_called) or "-"
        out.write(
            f"{i:>3}  {'PASS' if result.passed else 'FAIL':6}  "
            f"{_clip(result.scenario.name, width):{width}}  {result.turns_used:>5}  "
            f"{_clip(outcome, 24):24}  {result.seconds:>6.1f}s  {tools}\n"
        )
        for failure in result.failures:
            out.write(f"{'':13}- {failure}\n")
        if verbose or not result.passed:
            for line in result.agent_lines:
                out.write(f"{'':15}agent: {_clip(line, 100)}\n")
    passed = sum(r.passed for r in results)
    rate = 100.0 * passed / len(results) if results else 0.0
    out.write(f"\nTask success: {passed}/{len(results)} ({rate:.1f}%)\n")


def _clip(text: str | None, limit: int) -> str:
    text = text or ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- the command ---------------------------------------------------------------------------


def run_test_flows(
    config_path: str | Path,
    paths: Sequence[str | Path],
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    live_webhooks: bool = False,
    verbose: bool = False,
    week_of: date | None = None,
    llm: Any = None,
) -> int:
    """Exit status: 0 all passed, 1 some failed, 2 bad config/scenarios."""
    from agentd.config import ConfigError, load_config

    try:
        config = load_config(config_path)
        scenarios = load_scenarios(paths)
    except (ConfigError, ScenarioError) as exc:
        err.write(f"{exc}\n")
        return 2
    dialog = config.dialog
    if dialog is None or dialog.policy is None:
        err.write(f"{config_path}: no dialog: section with a policy\n")
        return 2
    if not scenarios:
        err.write("no scenario files found\n")
        return 2
    if llm is None:
        from agentd.dialog.agent import make_llm

        try:
            llm = make_llm(dialog.llm)
        except Exception as exc:  # missing model, llama-cpp not installed, bad server URL
            err.write(f"cannot start the LLM: {exc}\n")
            return 2
    runner = FlowRunner(
        engine_factory(dialog.policy, llm, dialog, live_webhooks=live_webhooks),
        week_of=week_of or date.today(),
        timezone=dialog.policy.agent.timezone,
    )
    results = []
    for index, scenario in enumerate(scenarios, 1):
        try:
            result = runner.run(scenario)
        except Exception as exc:  # a broken tool or data set fails that scenario, not the run
            result = crashed(scenario, exc)
        results.append(result)
        err.write(f"[{index}/{len(scenarios)}] {'PASS' if result.passed else 'FAIL'} "
                  f"{scenario.name} ({result.seconds:.1f}s)\n")  # fmt: skip
        err.flush()
    print_table(results, out, verbose=verbose)
    return 0 if all(r.passed for r in results) else 1


def add_test_flows_parser(commands: Any) -> None:
    flows = commands.add_parser(
        "test-flows", help="run scenario files against the policy and LLM; pass/fail table"
    )
    flows.add_argument("-c", "--config", required=True, help="path to config.yaml")
    flows.add_argument("paths", nargs="+", metavar="DIR", help="scenario files or directories")
    flows.add_argument(
        "--live-webhooks", action="store_true", help="call webhooks for real (default: stub)"
    )
    flows.add_argument("-v", "--verbose", action="store_true", help="show every agent line")
    flows.add_argument(
        "--week-of",
        default=None,
        help="YYYY-MM-DD: the week scenario times fall in (default: this week)",
    )


def run_test_flows_command(args: Any) -> int:
    week_of = None
    if args.week_of:
        try:
            week_of = date.fromisoformat(args.week_of)
        except ValueError:
            sys.stderr.write(f"--week-of: expected YYYY-MM-DD, got {args.week_of!r}\n")
            return 2
    return run_test_flows(
        args.config,
        args.paths,
        live_webhooks=args.live_webhooks,
        verbose=args.verbose,
        week_of=week_of,
    )
