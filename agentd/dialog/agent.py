"""The dialog engine: one `DialogSession` per call, made by a `DialogEngine` that holds what
calls share (the policy, the LLM backend, the tools, the fixed system prompt).

A turn: the caller's words go into the conversation; code-level escalation checks run; the
model writes one JSON reply whose "say" is spoken clause by clause while it is still being
written; its action (a tool, a transfer, the end of the call) is enforced here: undeclared
actions cannot parse, `confirm` tools run only after the caller said yes to exactly that
call, `requires` prerequisites must have succeeded, at most three tool calls per turn, and
tool or model failures follow the policy's `tool_failure` rule.

Sessions are synchronous generators (the call loop runs them in a worker thread); the model
runs in a helper thread so speech can be yielded while it decodes. Time comes from the
`now` callable passed in (never read here directly), so tests control the clock.
"""

from __future__ import annotations

import difflib
import json
import logging
import queue
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agentd.dialog.escalation import (
    Escalation,
    EscalationRules,
    content_stems,
    is_affirmative,
    mentions_phrase,
    words,
    rules_from_policy,
)
from agentd.dialog.prompt import (
    KEYPAD_PREFIX,
    HistoryEntry,
    agent_entry,
    build_messages,
    caller_entry,
    compact_json,
    system_prompt,
    tool_entry,
    tool_lines,
)
from agentd.dialog.schema import ReplyError, parse_reply, turn_schema
from agentd.dialog.types import (
    AgentAction,
    AgentReply,
    Cancel,
    ChatMessage,
    DialogEvent,
    EndCall,
    GenerationStats,
    HandoffRecord,
    JsonDict,
    Say,
    Tool,
    ToolCallRecord,
    ToolContext,
    ToolError,
    ToolFinished,
    ToolStarted,
    TranscriptLine,
    TransferRequested,
)
from agentd.signature import accepts_keyword

log = logging.getLogger(__name__)

MAX_TOOL_CALLS_PER_TURN = 3
TROUBLE_LINE = "I'm sorry, I'm having some trouble right now."
TOOL_TROUBLE_LINE = "I'm sorry, I couldn't complete that just now."
SAFE_LINE = "I'm sorry, that's not something I can help with on the phone."
CONFIRM_QUESTION = "Shall I go ahead?"
CLAUSE_MAX_WORDS = 16
GENERATE_TIMEOUT_S = 120.0

Clock = Callable[[], datetime]
HandoffPoster = Callable[[HandoffRecord], None]


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


# ---- speech output: clauses and the never_say guard ----------------------------------------

_ABBREVIATIONS = frozenset({"dr", "mr", "mrs", "ms", "st", "prof", "approx", "e.g", "i.e", "etc"})


# The reply's first piece is cut early so speech starts sooner: after FIRST_PIECE_WORDS[0]
# words, before a word that starts a phrase of its own ("... 24 hours' notice | to cancel"),
# and after FIRST_PIECE_WORDS[1] words at most. Each token is ~45 ms of the 1.5B on 2 cores:
# a 13-word first sentence otherwise keeps the caller waiting ~0.3 s longer.
FIRST_PIECE_WORDS = (5, 8)
_BREAK_BEFORE = frozenset({
    "to", "from", "for", "with", "and", "or", "but", "so", "because", "if", "when", "while",
    "at", "on", "in", "by", "about", "until", "before", "after", "which", "that", "who",
    "where", "please",
})
_TOKEN = re.compile(r"\S+")


def _first_word(token: str) -> str:
    found = words(token)
    return found[0] if found else ""


class ClauseSplitter:
    """Cuts streamed text into speakable pieces: at . ! ? , ; : followed by a space, or after
    `max_words` words without punctuation (TTS should not wait for a long sentence). The
    first piece is cut sooner (`first_words`: (min, max) words; None: like the rest). A cut
    never falls inside one of `keep_together` (the never_say phrases, so the speech guard
    sees each whole)."""

    def __init__(
        self,
        max_words: int = CLAUSE_MAX_WORDS,
        *,
        first_words: tuple[int, int] | None = FIRST_PIECE_WORDS,
        keep_together: Iterable[str] = (),
    ) -> None:
        self._buffer = ""
        self._max_words = max_words
        self._first_words = first_words
        self._first = True
        # A cut after a word that starts with one of these could split a phrase: the guard's
        # own stems (mentions_phrase) of every content word of a phrase but its last.
        self._joined = tuple(
            {s for phrase in keep_together for s in content_stems(phrase)[:-1]})

    def feed(self, text: str) -> list[str]:
        self._buffer += text
        pieces: list[str] = []
        start = 0
        for i in range(1, len(self._buffer)):
            prev, ch = self._buffer[i - 1], self._buffer[i]
            if ch.isspace() and prev in ".!?,;:" and self._is_boundary(start, i - 1):
                piece = self._buffer[start:i].strip()
                if piece:
                    pieces.append(piece)
                start = i
        rest = self._buffer[start:]
        if not pieces and self._first and self._first_words is not None:
            cut = self._early_cut(rest)
            if cut is not None:
                pieces.append(rest[:cut].strip())
                rest = rest[cut:]
        tokens = rest.split()
        if (len(tokens) > self._max_words and rest[-1:].isspace()
                and not self._joins(tokens[-1])):
            pieces.append(rest.strip())
            rest = ""
        self._buffer = rest
        if pieces:
            self._first = False
        return pieces

    def flush(self) -> list[str]:
        piece, self._buffer = self._buffer.strip(), ""
        self._first = False
        return [piece] if piece else []

    def _early_cut(self, rest: str) -> int | None:
        """Where to end the first piece in `rest` (no punctuation yet), or None: wait."""
        assert self._first_words is not None
        least, most = self._first_words
        spans = [match.span() for match in _TOKEN.finditer(rest)]
        complete = spans if rest[-1:].isspace() else spans[:-1]
        for count in range(least, len(complete) + 1):
            if self._joins(rest[slice(*complete[count - 1])]):
                continue
            if count == len(complete):
                if count >= most:
                    return complete[count - 1][1]
                break
            following = _first_word(rest[slice(*complete[count])])
            if following in _BREAK_BEFORE or count >= most:
                return complete[count - 1][1]
        return None

    def _joins(self, token: str) -> bool:
        """A cut right after `token` could split a keep_together phrase."""
        return any(word.startswith(s) for word in words(token) for s in self._joined)

    def _is_boundary(self, start: int, mark: int) -> bool:
        if self._buffer[mark] != ".":
            return True
        before = self._buffer[start:mark].split()
        last = before[-1].lower() if before else ""
        return last not in _ABBREVIATIONS and not (len(last) == 1 and last.isalpha())


_SENTENCE_END = re.compile(r"[.!?]$")


@dataclass
class SpeechGuard:
    """Replaces a sentence that touches a `never_say` phrase with a safe line (once)."""

    phrases: tuple[str, ...]
    safe_line: str = SAFE_LINE
    _suppressing: bool = False

    def check(self, piece: str) -> str | None:
        """The text to speak for `piece` (None: say nothing for it)."""
        ends_sentence = _SENTENCE_END.search(piece) is not None
        if self._suppressing:
            self._suppressing = not ends_sentence
            return None
        if any(mentions_phrase(piece, phrase) for phrase in self.phrases):
            self._suppressing = not ends_sentence
            return self.safe_line
        return piece

    def reset(self) -> None:
        self._suppressing = False


# ---- a test backend -----------------------------------------------------------------------

ScriptItem = str | JsonDict | BaseException | Callable[[list[ChatMessage]], "str | JsonDict"]


class ScriptedLlm:
    """An `LlmBackend` that returns queued replies (JSON text, dicts, callables of the
    messages, or exceptions to raise), streaming the "say" part to `on_say` in small chunks.
    For tests and demos; `calls` keeps every message list it was given."""

    name = "scripted"

    def __init__(self, replies: Iterable[ScriptItem] = (), *, chunk_chars: int = 5) -> None:
        self._replies: deque[ScriptItem] = deque(replies)
        self._chunk_chars = max(1, chunk_chars)
        self.calls: list[list[ChatMessage]] = []
        self.schemas: list[JsonDict] = []
        self.prefilled: list[list[ChatMessage]] = []
        self.prefill_schemas: list[JsonDict | None] = []

    def push(self, *replies: ScriptItem) -> None:
        self._replies.extend(replies)

    @property
    def remaining(self) -> int:
        return len(self._replies)

    def generate(
        self,
        messages: list[ChatMessage],
        schema: JsonDict,
        *,
        max_tokens: int = 256,
        on_say: Callable[[str], None] | None = None,
        cancel: Cancel | None = None,
    ) -> tuple[str, GenerationStats]:
        from agentd.dialog.jsonstream import SayStream

        self.calls.append(list(messages))
        self.schemas.append(schema)
        if not self._replies:
            raise RuntimeError("ScriptedLlm: no reply left in the script")
        item = self._replies.popleft()
        if isinstance(item, BaseException):
            raise item
        if callable(item):
            item = item(list(messages))
        text = item if isinstance(item, str) else json.dumps(item)
        stream = SayStream()
        for i in range(0, len(text), self._chunk_chars):
            if cancel is not None and cancel.cancelled:
                text = text[:i]
                break
            said = stream.feed(text[i : i + self._chunk_chars])
            if said and on_say is not None:
                on_say(said)
        stats = GenerationStats(
            prompt_tokens=sum(len(m.content) for m in messages) // 4,
            cached_tokens=0,
            completion_tokens=len(text) // 4,
            first_token_ms=0.0,
            total_ms=0.0,
        )
        return text, stats

    def prefill(self, messages: list[ChatMessage], *, schema: JsonDict | None = None) -> None:
        self.prefilled.append(list(messages))
        self.prefill_schemas.append(schema)


# ---- the engine -----------------------------------------------------------------------------


@dataclass
class SessionStats:
    """Counters a test or benchmark reads after a call."""

    llm_calls: int = 0
    llm_failures: int = 0
    refused_replies: int = 0  # model outputs parse_reply refused (undeclared action etc.)
    gated_confirm: int = 0
    gated_requires: int = 0
    gated_ungrounded: int = 0  # tool calls with a name the caller never said
    handoff_posts_failed: int = 0
    generation_ms: list[float] = field(default_factory=list)


class DialogEngine:
    """What every call shares: the policy, LLM, tools, system prompt and turn schemas."""

    def __init__(
        self,
        policy: Any,
        llm: Any,
        tools: Mapping[str, Tool],
        *,
        max_tokens: int = 200,
        context_chars: int | None = 12_000,
        handoff_poster: HandoffPoster | None = None,
        now: Clock = _utc_now,
        timer: Callable[[], float] = time.perf_counter,
        generate_timeout_s: float = GENERATE_TIMEOUT_S,
    ) -> None:
        self.policy = policy
        self.llm = llm
        self.tools = dict(tools)
        self.max_tokens = max_tokens
        self.context_chars = context_chars
        self.handoff_poster = handoff_poster
        self.now = now
        self.timer = timer
        self.generate_timeout_s = generate_timeout_s
        self.targets: tuple[str, ...] = tuple(policy.escalation.targets)
        self.rules = rules_from_policy(policy.escalation.rules)
        self.requires: dict[str, tuple[str, ...]] = {
            name: tuple(spec.requires) for name, spec in policy.tools.items()
        }
        reserved = [topic for rule in self.rules if rule.when == "topic" for topic in rule.topics]
        self.system_prompt = system_prompt(
            policy, tool_lines(self.tools, self.requires), self.targets, reserved
        )
        self.tool_parameters: dict[str, JsonDict] = {
            name: dict(tool.parameters) for name, tool in self.tools.items()
        }
        self.schema = turn_schema(self.tool_parameters, self.targets)
        self.schema_without_tools = turn_schema({}, self.targets)

    @classmethod
    def from_config(
        cls,
        dialog: Any,
        *,
        model_store: Any = None,
        policy: Any = None,
        llm: Any = None,
        now: Clock = _utc_now,
    ) -> DialogEngine:
        """Build from a validated `dialog:` config section (tools from the registry, the LLM
        backend named there, the hand-off webhook poster). `policy`/`llm` override."""
        from agentd.dialog.tools.registry import build_tools

        policy = policy if policy is not None else dialog.policy
        base_dir = policy.source.parent if policy.source is not None else Path.cwd()
        tools = build_tools(policy, base_dir)
        if llm is None:
            llm = make_llm(dialog.llm, model_store=model_store)
        return cls(
            policy,
            llm,
            tools,
            max_tokens=dialog.llm.max_tokens,
            context_chars=dialog.llm.context_tokens * 3,
            handoff_poster=make_handoff_poster(policy),
            now=now,
        )

    def warm_cache(self) -> bool:
        """Evaluate the prompt every call starts with (system prompt, greeting, the opening
        of the caller's first message) into the model's KV cache; blocking, for start-up.

        The system prompt is ~1.3k tokens: evaluated cold at a call's first turn it cost
        tens of seconds on two cores. Every call shares this prefix, so one evaluation here
        serves them all. False when the backend cannot prefill."""
        prefill = getattr(self.llm, "prefill", None)
        if not callable(prefill):
            return False
        history = [agent_entry(AgentReply(say=self.policy.agent.greeting)), caller_entry("")]
        prefill(build_messages(self.system_prompt, history))
        return True

    def new_session(
        self, *, caller_id: str | None = None, call_ref: str | None = None
    ) -> DialogSession:
        return DialogSession(self, caller_id=caller_id, call_ref=call_ref or uuid.uuid4().hex[:12])


def make_llm(llm_config: Any, *, model_store: Any = None) -> Any:
    """The backend a `dialog.llm` section names (llama: the model id from the store)."""
    if llm_config.backend == "openai":
        from agentd.dialog.llm_openai import OpenAIBackend

        return OpenAIBackend(
            llm_config.base_url,
            llm_config.model,
            api_key=llm_config.api_key(),
            temperature=llm_config.temperature,
            seed=llm_config.seed,
        )
    from agentd.dialog.llm_llama import LlamaBackend
    from agentd.models import ModelStore

    store = model_store if model_store is not None else ModelStore()
    directory = store.require(llm_config.model)
    gguf = sorted(Path(directory).glob("*.gguf"))
    model_path = gguf[0] if gguf else Path(directory)
    return LlamaBackend(
        model_path,
        n_ctx=llm_config.context_tokens,
        threads=llm_config.threads,
        adapt_threads=llm_config.adapt_threads,
        seed=llm_config.seed,
        temperature=llm_config.temperature,
    )


def make_handoff_poster(policy: Any) -> HandoffPoster | None:
    """POSTs the hand-off record to the policy's `escalation.handoff_webhook`, if any."""
    webhook = policy.escalation.handoff_webhook
    if webhook is None:
        return None
    from agentd.dialog.tools.webhook import post_handoff

    def post(record: HandoffRecord) -> None:
        post_handoff(webhook, record)

    return post


# ---- one call -------------------------------------------------------------------------------


@dataclass
class _Pending:
    """A confirm tool the model asked for, waiting for the caller's yes."""

    name: str
    arguments: JsonDict


@dataclass
class _Step:
    """Speech of one model reply (or one fixed line) as it is being said."""

    pieces: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.pieces)


class _Escalated(Exception):
    """Internal: a tool failure escalated and the turn is over."""


class DialogSession:
    """One call's conversation (implements `DialogSessionProtocol`)."""

    def __init__(self, engine: DialogEngine, *, caller_id: str | None, call_ref: str) -> None:
        self.engine = engine
        self.policy = engine.policy
        self.caller_id = caller_id
        self.call_ref = call_ref
        self.started = engine.now()
        self.stats = SessionStats()
        self.facts: dict[str, Any] = {}
        self.transcript: list[TranscriptLine] = []
        self.tool_calls: list[ToolCallRecord] = []
        self.history: list[HistoryEntry] = []
        self.ended: str | None = None  # end reason once EndCall was emitted
        self.transferred_to: str | None = None
        self._rules = EscalationRules(engine.rules)
        self._guard = SpeechGuard(tuple(self.policy.agent.never_say))
        self._succeeded: set[str] = set()
        self._pending: _Pending | None = None
        self._closing: Escalation | None = None
        self._turns = 0
        self._reprompts = 0
        self._turn_first_line = 0  # transcript index where this turn's agent speech begins
        self._turn_first_entry = 0  # history index likewise
        self._step: _Step | None = None
        self._cancel: Cancel | None = None
        self._greeted = False
        self._stopped_by_caller = False  # the last generation was cancelled (barge-in, hang-up)

    # -- the protocol --

    def greeting(self) -> str:
        """The first words; the outside-hours line instead when the business is closed."""
        self._greeted = True
        closed = self._rules.outside_hours()
        if closed is not None and not self.policy.is_open(self.engine.now()):
            self._closing = closed
            line = closed.say or self.policy.agent.greeting
        else:
            line = self.policy.agent.greeting
        self._record_agent(line)
        self.history.append(agent_entry(AgentReply(say=line)))
        return line

    def opening(self) -> Iterator[DialogEvent]:
        """The greeting as events; when closed, also the end or transfer that follows.
        (An extension of the protocol for call loops that can act on it at once.)"""
        yield Say(self.greeting())
        if self._closing is not None:
            closing, self._closing = self._closing, None
            yield from self._escalate(closing, say_rule_line=False)

    @property
    def finished(self) -> bool:
        return self.ended is not None or self.transferred_to is not None

    def turn(
        self, caller_text: str, *, confidence: float | None = None, dtmf: bool = False
    ) -> Iterator[DialogEvent]:
        if self.finished:
            return
        if not self._greeted:
            self.greeting()
        text = " ".join(caller_text.split())
        self._turns += 1
        self._reprompts = 0
        self.transcript.append(
            TranscriptLine("caller", f"{KEYPAD_PREFIX} {text}" if dtmf else text)
        )
        self.history.append(caller_entry(text, dtmf=dtmf))
        self._turn_first_line = len(self.transcript)
        self._turn_first_entry = len(self.history)
        self._guard.reset()
        if self._closing is not None:
            closing, self._closing = self._closing, None
            yield from self._escalate(closing, say_rule_line=False)
            return
        limit = self._limit_reached()
        if limit is not None:
            yield from self._escalate(limit)
            return
        if dtmf:
            keyed = self._keypad(text)
            if keyed is not None:
                yield from keyed
                return
        decision = self._rules.before_llm(text, confidence=confidence, dtmf=dtmf)
        if decision is not None:
            yield from self._escalate(decision)
            return
        yield from self._think(text)

    def silence(self) -> Iterator[DialogEvent]:
        if self.finished:
            return
        limits = self.policy.limits
        self._reprompts += 1
        self._turn_first_line = len(self.transcript)
        self._turn_first_entry = len(self.history)
        if self._call_too_long() or self._reprompts > limits.max_reprompts:
            yield from self._say_line(limits.final_line)
            yield from self._end("silence" if not self._call_too_long() else "max_call_seconds")
            return
        yield from self._say_line(limits.reprompt)

    def interrupted(self, played_text: str) -> None:
        """Keep only what was played of this turn's agent speech, marked interrupted; the
        model's view of its own replies is cut the same way. Cancels generation in flight.
        Call it while the turn generator is suspended or finished."""
        if self._cancel is not None:
            self._cancel.cancel()
        self._commit_step()
        remaining = " ".join(played_text.split())
        kept: list[TranscriptLine] = []
        lines = self.transcript[self._turn_first_line :]
        for line in lines:
            if line.speaker != "agent":
                kept.append(line)
                continue
            if remaining and remaining.startswith(line.text):
                kept.append(line)
                remaining = remaining[len(line.text) :].strip()
            elif remaining:
                kept.append(replace(line, text=remaining, interrupted=True))
                remaining = ""
        agent_lines = [i for i, line in enumerate(kept) if line.speaker == "agent"]
        if agent_lines and not any(line.interrupted for line in kept):
            last = agent_lines[-1]
            kept[last] = replace(kept[last], interrupted=True)
        self.transcript[self._turn_first_line :] = kept
        self._cut_history(" ".join(played_text.split()))

    def transfer_failed(self, reason: str) -> Iterator[DialogEvent]:
        failure = self.policy.escalation.on_transfer_failure
        self.transcript.append(TranscriptLine("system", f"transfer failed: {reason}"))
        self.facts["transfer_failed"] = reason
        self.transferred_to = None
        self._turn_first_line = len(self.transcript)
        self._turn_first_entry = len(self.history)
        yield from self._say_line(failure.say)
        if failure.then == "end_call":
            yield from self._end(f"transfer failed: {reason}", goodbye=False)

    def handoff(self, reason: str | None = None) -> HandoffRecord:
        return HandoffRecord(
            call_ref=self.call_ref,
            caller_id=self.caller_id,
            summary=self._summary(reason),
            reason=reason,
            transcript=tuple(self.transcript),
            facts=dict(self.facts),
            tool_calls=tuple(self.tool_calls),
        )

    def prefill(self, caller_text: str, *, stop: Callable[[], bool] | None = None) -> None:
        """Evaluate the prompt `turn(caller_text)` would send into the model's KV cache now,
        while the caller is still speaking (blocking: run it off the call's event loop).

        The prompt is prefilled as the model will start writing its reply (generation
        prompt and say opening, where the backend supports that), for a partial transcript
        too: if the caller says no more, the turn samples at once; if they do, only that
        short closing is evaluated again after their new words; the prepared final
        transcript is prefilled the same way. Changes nothing in the session: the history,
        transcript and what `turn()` produces are the same with or without it. `stop()`
        true: give up early (passed to backends whose prefill takes it)."""
        prefill = getattr(self.engine.llm, "prefill", None)
        text = " ".join(caller_text.split())
        if not callable(prefill) or not text or self.finished or self._closing is not None:
            return
        if not self._greeted:
            return  # turn() would add the greeting first; not worth predicting
        history = [*self.history, caller_entry(text)]
        messages = self._messages(history)
        pending = self._pending is not None and is_affirmative(text)
        kwargs: dict[str, Any] = {}
        if stop is not None and accepts_keyword(prefill, "stop"):
            kwargs["stop"] = stop
        if not pending and accepts_keyword(prefill, "schema"):
            kwargs["schema"] = self.engine.schema  # the schema _think starts with
        prefill(messages, **kwargs)

    def cancel_turn(self) -> None:
        """Stop the model at its next token (hang-up); safe from any thread."""
        if self._cancel is not None:
            self._cancel.cancel()

    # -- a turn's thinking --

    def _think(self, caller_text: str) -> Iterator[DialogEvent]:
        tool_calls_left = MAX_TOOL_CALLS_PER_TURN
        pending, self._pending = self._pending, None
        try:
            if pending is not None and is_affirmative(caller_text):
                self.history.append(
                    agent_entry(
                        AgentReply("", AgentAction("tool", pending.name, pending.arguments))
                    )
                )
                yield from self._run_tool(pending.name, pending.arguments)
                tool_calls_left -= 1
            said: list[str] = []
            failed = False
            while True:
                schema = self.engine.schema if tool_calls_left > 0 else None
                reply = yield from self._generate(schema)
                if reply is None:
                    if self._stopped_by_caller:
                        return
                    yield from self._say_line(TROUBLE_LINE)
                    escalation = self._rules.tool_failure("the language model failed")
                    if escalation is not None:
                        yield from self._escalate(escalation)
                        return
                    failed = True
                    break
                said.append(reply.say)
                action = reply.action
                if action.kind == "tool" and action.tool is not None:
                    tool_calls_left -= 1
                    outcome = yield from self._tool_action(action.tool, action.arguments, reply)
                    if outcome == "asked":
                        break
                    continue
                if action.kind == "transfer" and action.target is not None:
                    reason = action.reason or "the agent transferred the call"
                    yield from self._transfer(action.target, f"agent: {reason}")
                    return
                if action.kind == "end_call":
                    if "bye" not in reply.say.lower():
                        yield from self._say_line(self.policy.agent.goodbye)
                    yield from self._end(action.reason or "caller finished", goodbye=False)
                    return
                break
            escalation = self._rules.after_reply(caller_text, " ".join(said), failed=failed)
            if escalation is not None:
                yield from self._escalate(escalation)
        except _Escalated:
            return

    def _messages(self, history: list[HistoryEntry]) -> list[ChatMessage]:
        """The model's view of `history` (one place, so prefill sends what turn sends)."""
        engine = self.engine
        fit = getattr(engine.llm, "fit", None)
        if callable(fit):  # the backend counts real tokens and keeps its cached prefix
            return list(fit(build_messages(engine.system_prompt, history), engine.max_tokens))
        return build_messages(engine.system_prompt, history, max_chars=engine.context_chars)

    def _generate(self, schema: JsonDict | None) -> Generator[DialogEvent, None, AgentReply | None]:
        """Run the model in a helper thread, yielding Say per clause as "say" streams; the
        parsed reply (None on failure, cancellation or an undeclared action)."""
        engine = self.engine
        tools = engine.tool_parameters if schema is not None else {}
        schema = schema if schema is not None else engine.schema_without_tools
        messages = self._messages(self.history)
        cancel = Cancel()
        self._cancel = cancel
        events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

        def work() -> None:
            try:
                result = engine.llm.generate(
                    messages,
                    schema,
                    max_tokens=engine.max_tokens,
                    on_say=lambda chunk: events.put(("say", chunk)),
                    cancel=cancel,
                )
                events.put(("done", result))
            except BaseException as exc:  # reported to the turn, never lost in the thread
                events.put(("error", exc))

        self.stats.llm_calls += 1
        started = engine.timer()
        worker = threading.Thread(target=work, name=f"llm-{self.call_ref}", daemon=True)
        worker.start()
        splitter = ClauseSplitter(keep_together=self._guard.phrases)
        step = self._begin_step()
        streamed = ""
        outcome: tuple[str, Any] = ("error", TimeoutError("generation timed out"))
        deadline = started + engine.generate_timeout_s
        timed_out = False
        try:
            while True:
                try:
                    kind, value = events.get(timeout=max(0.01, deadline - engine.timer()))
                except queue.Empty:
                    timed_out = True
                    cancel.cancel()
                    break
                if kind == "say":
                    streamed += value
                    for piece in splitter.feed(value):
                        yield from self._speak(piece, step)
                    continue
                outcome = (kind, value)
                break
            if outcome[0] == "done":
                text, _stats = outcome[1]
                try:
                    reply = parse_reply(text, tools, engine.targets)
                except ReplyError as exc:
                    reply = None
                    if cancel.cancelled:  # barge-in or hang-up cut it: expected, not refused
                        log.debug("call %s: reply stopped by the caller: %s", self.call_ref, exc)
                    else:
                        self.stats.refused_replies += 1
                        log.warning("call %s: model reply refused: %s", self.call_ref, exc)
                    if streamed.strip() and not cancel.cancelled and _cut_inside_say(text):
                        # Cut short (max_tokens) mid-sentence: the caller already heard the
                        # words, so keep them as a plain reply instead of a failure. (A bad
                        # action after a finished say is still refused.)
                        reply = AgentReply(say=streamed.strip())
                if reply is not None and reply.say.startswith(streamed):
                    # Backends that do not stream (or stream only part) still get spoken.
                    for piece in splitter.feed(reply.say[len(streamed) :]):
                        yield from self._speak(piece, step)
            else:
                reply = None
                if not cancel.cancelled or timed_out:
                    log.warning("call %s: model failed: %r", self.call_ref, outcome[1])
            self._stopped_by_caller = cancel.cancelled and not timed_out
            if reply is None and not self._stopped_by_caller:
                self.stats.llm_failures += 1
            if not self._stopped_by_caller:
                for piece in splitter.flush():
                    yield from self._speak(piece, step)
        finally:
            if worker.is_alive():
                cancel.cancel()
                worker.join(timeout=5.0)
            self.stats.generation_ms.append((engine.timer() - started) * 1000.0)
            self._commit_step()
        if reply is None:
            return None
        spoken = replace(reply, say=step.text)
        self.history.append(agent_entry(spoken))
        return spoken

    def _tool_action(
        self, name: str, arguments: JsonDict, reply: AgentReply
    ) -> Generator[DialogEvent, None, str]:
        """Enforce grounding/requires/confirm, then run; "asked" when waiting for a yes."""
        invented = self._ungrounded_name(arguments)
        if invented is not None:
            self.stats.gated_ungrounded += 1
            error = f"not run: the caller has not said {invented!r}; ask them for it"
            self.history.append(tool_entry(name, ok=False, error=error))
            return "refused"
        requires = self.engine.requires.get(name, ())
        missing = [need for need in requires if need not in self._succeeded]
        if missing:
            self.stats.gated_requires += 1
            error = f"not run: {missing[0]} must succeed first"
            self.history.append(tool_entry(name, ok=False, error=error))
            return "refused"
        tool = self.engine.tools[name]
        if tool.confirm:
            self.stats.gated_confirm += 1
            self._pending = _Pending(name, dict(arguments))
            self.history.append(
                tool_entry(name, ok=False, error="not run yet: waiting for the caller to say yes")
            )
            if not reply.say.rstrip().endswith("?"):
                question = CONFIRM_QUESTION
                if not reply.say.strip():
                    question = f"Just to confirm: {self._describe(tool, arguments)}. {question}"
                self._commit_step()
                self._record_agent(question)
                self._extend_last_agent_say(question)
                yield Say(question)
            return "asked"
        yield from self._run_tool(name, arguments)
        return "ran"

    def _ungrounded_name(self, arguments: JsonDict) -> str | None:
        """A person or company name argument with a word nobody in the call said (small
        models fill in "John Doe" before the caller gave a name)."""
        heard = " ".join(
            [line.text for line in self.transcript if line.speaker == "caller"]
            + [entry.content for entry in self.history if entry.kind == "tool"]
        )
        heard_words = set(words(heard))
        for key, value in arguments.items():
            if not isinstance(value, str) or not _NAME_KEY.search(key):
                continue
            for word in words(value):
                if len(word) < 2 or word.isdigit() or word in heard_words:
                    continue
                if not difflib.get_close_matches(word, heard_words, n=1, cutoff=0.8):
                    return value
        return None

    def _run_tool(self, name: str, arguments: JsonDict) -> Iterator[DialogEvent]:
        """Run a tool (its gates already passed); a failure that escalates raises _Escalated."""
        from agentd.dialog.tools.errors import ToolRefused

        tool = self.engine.tools[name]
        yield ToolStarted(name, dict(arguments))
        context = ToolContext(
            caller_id=self.caller_id,
            call_ref=self.call_ref,
            now_iso=self.policy.local_time(self.engine.now()).isoformat(),
            facts=dict(self.facts),
        )
        started = self.engine.timer()
        result: JsonDict | None = None
        error: str | None = None
        refused = False
        try:
            result = tool.run(dict(arguments), context)
        except ToolRefused as exc:
            error, refused = str(exc) or "refused", True
        except ToolError as exc:
            error = str(exc) or "failed"
        except Exception as exc:  # a tool bug must not end the call
            log.exception("call %s: tool %s raised", self.call_ref, name)
            error = f"internal error ({type(exc).__name__})"
        record = ToolCallRecord(
            name=name,
            arguments=dict(arguments),
            ok=error is None,
            result=result,
            error=error,
            latency_ms=(self.engine.timer() - started) * 1000.0,
        )
        self.tool_calls.append(record)
        yield ToolFinished(record)
        if error is None:
            self._note_success(name, dict(arguments), result or {})
            self.history.append(tool_entry(name, ok=True, result=result))
            return
        self.history.append(tool_entry(name, ok=False, error=error))
        if refused:
            return
        escalation = self._rules.tool_failure(f"{name}: {error}")
        if escalation is not None:
            yield from self._say_line(TOOL_TROUBLE_LINE)
            yield from self._escalate(escalation)
            raise _Escalated

    def _note_success(self, name: str, arguments: JsonDict, result: JsonDict) -> None:
        from agentd.dialog.tools.registry import facts_after

        self.facts.update(facts_after(name, result, self.facts))
        self.facts[name] = result
        if name in self.facts.get("succeeded", ()):
            self._succeeded.add(name)
            collected = self.facts.setdefault("collected", {})
            collected.update({k: v for k, v in arguments.items() if _is_scalar(v)})

    # -- escalation, transfer, end --

    def _escalate(
        self, escalation: Escalation, *, say_rule_line: bool = True
    ) -> Iterator[DialogEvent]:
        if say_rule_line and escalation.say:
            yield from self._say_line(escalation.say)
        reason = f"{escalation.kind}: {escalation.reason}"
        if escalation.target is None:
            yield from self._say_line(self.policy.agent.goodbye)
            yield from self._end(reason, goodbye=False)
            return
        yield from self._transfer(escalation.target, reason)

    def _transfer(self, target: str, reason: str) -> Iterator[DialogEvent]:
        yield from self._say_line(self.policy.handoff_text(target))
        self.transferred_to = target
        self.facts["transfer_target"] = target
        record = self.handoff(reason)
        self._post_handoff(record)
        yield TransferRequested(
            target=target, uri=self.policy.target_uri(target), reason=reason, handoff=record
        )

    def _end(self, reason: str, *, goodbye: bool = True) -> Iterator[DialogEvent]:
        if goodbye:
            yield from self._say_line(self.policy.agent.goodbye)
        self.ended = reason
        self._post_handoff(self.handoff(reason))
        yield EndCall(reason)

    def _post_handoff(self, record: HandoffRecord) -> None:
        poster = self.engine.handoff_poster
        if poster is None:
            return
        try:
            poster(record)
        except Exception as exc:  # the hand-off webhook is best effort
            self.stats.handoff_posts_failed += 1
            log.warning("call %s: hand-off webhook failed: %s", self.call_ref, exc)

    def _limit_reached(self) -> Escalation | None:
        limits = self.policy.limits
        if self._turns > limits.max_turns:
            reason = f"more than {limits.max_turns} turns"
        elif self._call_too_long():
            reason = f"call longer than {limits.max_call_seconds} s"
        else:
            return None
        # A long call is a struggling call: a person takes over where the policy names one.
        for kind in ("caller_asks_for_human", "misunderstanding", "tool_failure"):
            rule = self._rules.first(kind)  # type: ignore[arg-type]
            if rule is not None and rule.target is not None:
                return Escalation("limit", rule.target, None, reason)
        return Escalation("limit", None, None, reason)

    def _call_too_long(self) -> bool:
        elapsed = (self.engine.now() - self.started).total_seconds()
        return elapsed > self.policy.limits.max_call_seconds

    def _keypad(self, digits: str) -> Iterator[DialogEvent] | None:
        action = self.policy.dtmf_action(digits.replace(" ", ""))
        if action is None:
            return None

        def events() -> Iterator[DialogEvent]:
            if action.say:
                yield from self._say_line(action.say)
            if action.transfer is not None:
                yield from self._transfer(action.transfer, f"keypad: caller pressed {digits}")
            elif action.end_call:
                yield from self._end(f"keypad: caller pressed {digits}")

        return events()

    # -- speech bookkeeping --

    def _begin_step(self) -> _Step:
        self._commit_step()
        self._step = _Step()
        return self._step

    def _speak(self, piece: str, step: _Step) -> Iterator[DialogEvent]:
        text = self._guard.check(piece)
        if text is None or (text == self._guard.safe_line and text in step.pieces):
            return
        step.pieces.append(text)
        yield Say(text)

    def _commit_step(self) -> None:
        step, self._step = self._step, None
        if step is not None and step.pieces:
            self._record_agent(step.text)

    def _say_line(self, line: str) -> Iterator[DialogEvent]:
        """A fixed line from the policy or code (not the model): said whole, recorded, and
        added to the model's view of the conversation."""
        self._commit_step()
        self._record_agent(line)
        self.history.append(agent_entry(AgentReply(say=line)))
        yield Say(line)

    def _extend_last_agent_say(self, line: str) -> None:
        for index in range(len(self.history) - 1, -1, -1):
            entry = self.history[index]
            if entry.kind == "agent":
                data = json.loads(entry.content)
                data["say"] = f"{data.get('say', '')} {line}".strip()
                self.history[index] = HistoryEntry("agent", compact_json(data))
                return

    def _record_agent(self, text: str) -> None:
        self.transcript.append(TranscriptLine("agent", text))

    def _cut_history(self, played: str) -> None:
        remaining = played
        agent_entries = [
            i for i in range(self._turn_first_entry, len(self.history))
            if self.history[i].kind == "agent"
        ]
        if not agent_entries and played:
            # Cut off before the reply was complete: the model still learns what was heard.
            self.history.append(agent_entry(AgentReply(say=played)))
            return
        for index in agent_entries:
            entry = self.history[index]
            try:
                data = json.loads(entry.content)
            except ValueError:
                continue
            say = str(data.get("say", ""))
            if remaining.startswith(say):
                remaining = remaining[len(say) :].strip()
                continue
            data["say"], remaining = remaining, ""
            self.history[index] = HistoryEntry("agent", compact_json(data))

    # -- the hand-off summary --

    def _summary(self, reason: str | None) -> str:
        parts = [f"Caller {self.caller_id or 'with no caller ID'}"]
        verified = self.facts.get("verified")
        if isinstance(verified, Mapping):
            who = verified.get("name") or verified.get("patient_id") or verified.get("id")
            parts.append(f"identity verified{f' ({who})' if who else ''}")
        collected = self.facts.get("collected")
        if isinstance(collected, Mapping) and collected:
            shown = ", ".join(f"{k}={v}" for k, v in list(collected.items())[:6])
            parts.append(f"gave {shown}")
        summary = "; ".join(parts) + "."
        if self.tool_calls:
            done = ", ".join(
                f"{c.name} {'ok' if c.ok else 'failed (' + (c.error or '') + ')'}"
                for c in self.tool_calls[-5:]
            )
            summary += f" Tools: {done}."
        if reason:
            summary += f" Reason: {reason}."
        last = [line.text for line in self.transcript if line.speaker == "caller"][-2:]
        if last:
            quoted = " / ".join(_clip(text, 120) for text in last)
            summary += f' Caller said: "{quoted}".'
        return summary

    @staticmethod
    def _describe(tool: Tool, arguments: JsonDict) -> str:
        action = tool.description.rstrip(". ") or tool.name.replace("_", " ")
        details = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in arguments.items())
        action = action[:1].lower() + action[1:]
        return f"{action}, {details}" if details else action


_NAME_KEY = re.compile(r"(?:^|_)(?:name|surname|customer|company)$")


def _cut_inside_say(text: str) -> bool:
    """The reply ended before the say string closed (the token limit cut it)."""
    from agentd.dialog.jsonstream import SayStream

    stream = SayStream()
    stream.feed(text)
    return not stream.malformed and not stream.say_complete and bool(stream.say)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."
