"""LlamaBackend with the tiny SmolLM2-135M: schema-valid output, streaming say, determinism,
cancel, KV-cache reuse across turns and prefill; fit_messages without a model."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from agentd.dialog.llm_llama import LlamaBackend, _DraftLookup, fit_messages
from agentd.dialog.schema import LlmError, parse_reply, turn_schema
from agentd.dialog.types import Cancel, ChatMessage

TOOLS = {
    "find_slots": {
        "type": "object",
        "properties": {"day": {"type": "string", "enum": ["monday", "tuesday", "friday"]}},
        "required": ["day"],
    },
    "cancel_appointment": {
        "type": "object",
        "properties": {"appointment_id": {"type": "string", "maxLength": 12}},
        "required": ["appointment_id"],
    },
}
TARGETS = ["front_desk", "billing"]
SCHEMA = turn_schema(TOOLS, TARGETS)
SYSTEM = ChatMessage(
    "system",
    "You are Ava, the receptionist of Bright Smile Dental. Answer in one short sentence. "
    "Reply with JSON: say (what you say) and action (none, a tool, transfer or end_call).",
)
CALLER_LINES = [
    "Hi, can I book a cleaning on Tuesday?",
    "I need to talk to someone about my bill.",
    "Please cancel appointment A123.",
    "Thanks, that's all, goodbye!",
]


def smollm_path() -> Path:
    from agentd.models import ModelStore
    from agentd.models.store import ModelError

    try:
        return Path(ModelStore().require("smollm2-135m"))
    except ModelError:
        pytest.skip("smollm2-135m not installed: python -m agentd models fetch smollm2-135m")


def model_file(directory: Path) -> Path:
    return directory if directory.is_file() else next(directory.glob("*.gguf"))


@pytest.fixture(scope="module")
def backend() -> Iterator[LlamaBackend]:
    pytest.importorskip("llama_cpp")
    llm = LlamaBackend(model_file(smollm_path()), n_ctx=1024, threads=1)
    yield llm
    llm.close()


def chat(*user_lines: str) -> list[ChatMessage]:
    return [SYSTEM, *(ChatMessage("user", line) for line in user_lines)]


@pytest.mark.parametrize("line", CALLER_LINES)
def test_output_always_follows_the_schema(backend: LlamaBackend, line: str) -> None:
    pieces: list[str] = []
    text, stats = backend.generate(chat(line), SCHEMA, max_tokens=256, on_say=pieces.append)
    reply = parse_reply(text, TOOLS, TARGETS)  # raises if anything is undeclared
    assert "".join(pieces) == reply.say
    assert stats.completion_tokens > 0 and stats.prompt_tokens > 0
    assert 0 < stats.first_token_ms <= stats.total_ms


def test_say_streams_in_pieces_while_generating(backend: LlamaBackend) -> None:
    pieces: list[str] = []
    done = threading.Event()

    def on_say(text: str) -> None:
        assert not done.is_set()
        pieces.append(text)

    text, _ = backend.generate(chat(CALLER_LINES[0]), SCHEMA, on_say=on_say)
    done.set()
    assert len(pieces) >= 2  # token by token, not once at the end
    assert json.loads(text)["say"] == "".join(pieces)


def test_cancel_from_on_say_stops_at_the_next_token(backend: LlamaBackend) -> None:
    cancel = Cancel()
    pieces: list[str] = []

    def on_say(text: str) -> None:
        pieces.append(text)
        cancel.cancel()

    full, full_stats = backend.generate(chat(CALLER_LINES[1]), SCHEMA)
    text, stats = backend.generate(chat(CALLER_LINES[1]), SCHEMA, on_say=on_say, cancel=cancel)
    assert len(pieces) == 1
    assert stats.completion_tokens < full_stats.completion_tokens
    assert full.startswith(text) and text != full


def test_cancel_before_start_generates_nothing(backend: LlamaBackend) -> None:
    cancel = Cancel()
    cancel.cancel()
    text, stats = backend.generate(chat("Hello?"), SCHEMA, cancel=cancel)
    assert stats.completion_tokens == 0
    assert text == '{"say":"'


def test_deterministic_twice_and_across_instances(backend: LlamaBackend) -> None:
    messages = chat(CALLER_LINES[2])
    first, _ = backend.generate(messages, SCHEMA)
    second, stats = backend.generate(messages, SCHEMA)
    assert first == second
    assert stats.cached_tokens == stats.prompt_tokens - 1  # all but the token re-read for logits
    other = LlamaBackend(backend.model_path, n_ctx=1024, threads=1)
    try:
        assert other.generate(messages, SCHEMA)[0] == first
    finally:
        other.close()


def test_full_grammar_mask_gives_the_same_greedy_output(backend: LlamaBackend) -> None:
    messages = chat(CALLER_LINES[0])
    checked, _ = backend.generate(messages, SCHEMA)
    backend.greedy_grammar_check = False
    try:
        masked, _ = backend.generate(messages, SCHEMA)
    finally:
        backend.greedy_grammar_check = True
    assert checked == masked


def test_second_turn_reuses_the_kv_cache(backend: LlamaBackend) -> None:
    turn1 = chat(CALLER_LINES[0])
    reply1, stats1 = backend.generate(turn1, SCHEMA)
    turn2 = [*turn1, ChatMessage("assistant", reply1), ChatMessage("user", "Friday then.")]
    _, stats2 = backend.generate(turn2, SCHEMA)
    # the whole first prompt and the reply's own tokens are reused (all but its last token)
    assert stats2.cached_tokens >= stats1.prompt_tokens + stats1.completion_tokens - 2
    assert stats2.prompt_tokens - stats2.cached_tokens < 25


def test_prefill_evaluates_the_caller_partial_text_ahead(backend: LlamaBackend) -> None:
    base = chat(CALLER_LINES[3])
    backend.generate(base, SCHEMA)  # something else in the cache first
    partial = chat("I would like to move my appointment to")
    backend.prefill(partial)
    final = chat("I would like to move my appointment to Friday.")
    _, stats = backend.generate(final, SCHEMA)
    prefix = backend.tokenize(backend.render(partial[:1], add_generation_prompt=False))
    assert stats.cached_tokens > len(prefix) + 5  # system prompt and most of the caller text


def test_prefill_with_the_schema_leaves_nothing_to_evaluate(backend: LlamaBackend) -> None:
    turn = chat("Do you open on Saturdays?")
    expected, _ = backend.generate(turn, SCHEMA)
    backend.generate(chat(CALLER_LINES[1]), SCHEMA)  # something else in the cache first
    backend.prefill(turn, schema=SCHEMA)
    reply, stats = backend.generate(turn, SCHEMA)
    assert stats.cached_tokens == stats.prompt_tokens  # not even the last token again
    assert reply == expected  # the kept logits are the ones a fresh evaluation gives


def test_prefill_of_another_text_still_gives_the_same_reply(backend: LlamaBackend) -> None:
    turn = chat("Can I come in on Monday?")
    expected, _ = backend.generate(turn, SCHEMA)
    backend.prefill(chat("Can I come in on Monday morning instead?"), schema=SCHEMA)
    reply, stats = backend.generate(turn, SCHEMA)
    assert reply == expected and stats.cached_tokens < stats.prompt_tokens


def test_schema_without_say_first_still_constrains(backend: LlamaBackend) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    pieces: list[str] = []
    text, _ = backend.generate(chat("Is the sky blue?"), schema, on_say=pieces.append)
    assert json.loads(text)["answer"] in ("yes", "no")
    assert pieces == []


def test_concurrent_calls_are_serialised_and_match_sequential(backend: LlamaBackend) -> None:
    lines = CALLER_LINES[:2]
    expected = [backend.generate(chat(line), SCHEMA)[0] for line in lines]
    results: dict[int, str] = {}

    def worker(i: int) -> None:
        results[i] = backend.generate(chat(lines[i]), SCHEMA)[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [results[0], results[1]] == expected


def test_draft_lookup_guesses_what_followed_the_same_tokens_in_the_prompt() -> None:
    prompt = [1, 2, 3, 4, 5, 6, 7, 9, 2, 3, 4, 8]
    lookup = _DraftLookup(prompt)
    assert lookup.draft([0, 2, 3, 4], 3) == [8]  # the latest occurrence, to the prompt's end
    assert lookup.draft([5, 6, 7], 2) == [9, 2]
    assert lookup.draft([6, 7], 4) == []  # fewer tokens than a match needs
    assert lookup.draft([3, 4, 9], 4) == []  # never seen
    assert lookup.draft([1, 2, 3], 0) == []


def test_guessed_tokens_are_kept_only_when_right(backend: LlamaBackend) -> None:
    answer = "We are open Monday to Friday from eight in the morning to six in the evening."
    turn = [ChatMessage("system", f"{SYSTEM.content} Opening hours answer: {answer}"),
            ChatMessage("user", "When are you open? Answer with the opening hours answer.")]
    backend.draft_tokens = 0
    try:
        plain, _ = backend.generate(turn, SCHEMA)
    finally:
        backend.draft_tokens = 4
    guessed, stats = backend.generate(turn, SCHEMA)
    assert backend.last_drafted > 0 and 0 < backend.last_accepted <= backend.last_drafted
    reply = parse_reply(guessed, TOOLS, TARGETS)  # still the schema's JSON
    assert reply.say and stats.completion_tokens > 5
    # The same words as without guessing (a guess is kept only if it is what was sampled;
    # batch arithmetic may still tip a near tie, so compare the start).
    assert guessed[:40] == plain[:40]
    # Generation goes on from a consistent context: the next turn reuses it.
    _, after = backend.generate([*turn, ChatMessage("assistant", guessed),
                                 ChatMessage("user", "Thanks.")], SCHEMA)
    assert after.cached_tokens >= stats.prompt_tokens + stats.completion_tokens - 2


CALLER_A = ("Hello, this is Margaret Thompson, I have a cleaning booked for next Tuesday "
            "morning at nine with Doctor Patel and I would like to know whether I can bring "
            "my daughter along to the same appointment.")
CALLER_B = ("Hi there, my name is Robert Fitzgerald and I am calling about an invoice I "
            "received last week for a filling, the amount looks higher than what the "
            "receptionist told me on the day.")


def test_calls_taking_turns_each_keep_their_conversation_cached(backend: LlamaBackend) -> None:
    turn_a = chat(CALLER_A)
    reply_a, stats_a = backend.generate(turn_a, SCHEMA)
    next_a = [*turn_a, ChatMessage("assistant", reply_a), ChatMessage("user", "Friday then.")]
    expected, _ = backend.generate(next_a, SCHEMA)  # A's second turn with nothing between

    backend.generate(chat("Hi."), SCHEMA)  # reset to a short, unrelated context
    backend.generate(turn_a, SCHEMA)
    switches = backend.context_switches
    backend.generate(chat(CALLER_B), SCHEMA)  # another call's turn overwrites A's cells
    reply, stats = backend.generate(next_a, SCHEMA)
    assert backend.context_switches == switches + 1
    # A's first prompt and reply came back from the copy, not evaluated again ...
    assert stats.cached_tokens >= stats_a.prompt_tokens + stats_a.completion_tokens - 2
    # ... and the copy is exact: the same reply as without the other call in between.
    assert reply == expected
    # B was set aside in turn: its next turn also finds its conversation.
    _, stats_b = backend.generate([*chat(CALLER_B), ChatMessage("user", "Hello?")], SCHEMA)
    assert stats_b.cached_tokens > len(backend.tokenize(CALLER_B))


def test_more_calls_than_held_contexts_take_turns(backend: LlamaBackend,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import agentd.dialog.llm_llama as llm_llama

    monkeypatch.setattr(llm_llama, "HELD_CONTEXTS", 2)
    # Three calls, two held: when A comes back it is the oldest held context, the one that
    # setting C aside would drop.
    callers = [CALLER_A, CALLER_B, CALLER_B.replace("Robert", "Edward")]
    for _ in range(2):
        for caller in callers:
            reply, _ = backend.generate(chat(caller), SCHEMA)
            parse_reply(reply, TOOLS, TARGETS)
            assert len(backend._held) <= 2


def test_a_revised_partial_is_not_set_aside(backend: LlamaBackend) -> None:
    backend.generate(chat("Hi."), SCHEMA)
    held = len(backend._held)
    backend.prefill(chat("I would like to move my"), schema=SCHEMA)
    backend.prefill(chat("I would like to move my appointment to Friday."), schema=SCHEMA)
    assert len(backend._held) == held  # a few words differ: nothing worth a copy


TAKE_YOUR_TIME = '{"say": "Take your time.", "action": {"type": "none"}}'


def test_long_call_is_fitted_into_the_context(backend: LlamaBackend) -> None:
    messages = [SYSTEM]
    for i in range(60):
        messages.append(ChatMessage("user", f"Turn {i}: I am still thinking about which day."))
        messages.append(ChatMessage("assistant", TAKE_YOUR_TIME))
    messages.append(ChatMessage("user", "Tuesday please."))
    assert backend.count_tokens(messages) > backend.n_ctx
    text, stats = backend.generate(messages, SCHEMA, max_tokens=200)
    parse_reply(text, TOOLS, TARGETS)
    assert stats.prompt_tokens + 200 <= backend.n_ctx


def test_a_single_message_too_long_is_a_clear_error(backend: LlamaBackend) -> None:
    with pytest.raises(LlmError, match="exceeds the context"):
        backend.generate(chat("word " * 2000), SCHEMA)


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LlmError, match="not found"):
        LlamaBackend(tmp_path / "nope.gguf")


# ---- fit_messages (no model) ------------------------------------------------------------------


def count_words(messages: Sequence[ChatMessage]) -> int:
    return sum(len(m.content.split()) + 2 for m in messages)


def long_call(turns: int) -> list[ChatMessage]:
    messages = [ChatMessage("system", "policy " * 20)]
    for i in range(turns):
        messages.append(ChatMessage("user", f"caller line {i} " + "word " * 8))
        said = json.dumps({"say": f"agent line {i}", "action": {"type": "none"}})
        messages.append(ChatMessage("assistant", said))
    return messages


def test_fit_keeps_everything_that_fits() -> None:
    messages = long_call(3)
    assert fit_messages(messages, 10_000, count_words) == messages


def test_fit_keeps_the_system_prompt_and_the_latest_turns() -> None:
    messages = long_call(40)
    fitted = fit_messages(messages, 300, count_words)
    assert count_words(fitted) <= 300
    assert fitted[0] == messages[0]
    assert fitted[1].role == "system" and fitted[1].content.startswith("Earlier in this call")
    assert "agent line" in fitted[1].content  # the say text, not raw JSON
    assert fitted[-1] == messages[-1]
    assert fitted[2:] == messages[len(messages) - len(fitted) + 2 :]


def test_fit_cut_point_is_stable_across_turns() -> None:
    """Dropping in blocks keeps the prompt prefix (and its KV cache) the same next turn."""
    messages = long_call(40)
    cut_now = fit_messages(messages, 300, count_words)
    next_turn = fit_messages([*messages, ChatMessage("user", "one more")], 300, count_words)
    assert next_turn[: len(cut_now)] == cut_now


def test_fit_never_drops_the_last_message() -> None:
    messages = [ChatMessage("system", "s"), ChatMessage("user", "word " * 500)]
    assert fit_messages(messages, 10, count_words)[-1] == messages[-1]
