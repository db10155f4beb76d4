"""Escalation rules in code: matchers and the count-based streaks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentd.dialog.escalation import (
    EscalationRule,
    EscalationRules,
    agent_sounds_confused,
    asks_for_human,
    is_affirmative,
    is_frustrated,
    mentions_phrase,
    rules_from_policy,
    stem,
)


@pytest.mark.parametrize(
    "text",
    [
        "Can I speak to a real person please?",
        "I want to talk to someone",
        "operator",
        "Put me through to the front desk",
        "Just get me a human",
        "I'd like to speak with a representative",
        "Are you a robot? I want a person",
        "TRANSFER ME TO A MANAGER",
    ],
)
def test_asks_for_human(text: str) -> None:
    assert asks_for_human(text)


@pytest.mark.parametrize(
    "text",
    [
        "I'd like to book a cleaning",
        "My name is Jane, date of birth third of May",
        "Can you tell me your opening hours?",
        "Is the dentist a woman or a man?",
        "",
    ],
)
def test_does_not_ask_for_human(text: str) -> None:
    assert not asks_for_human(text)


@pytest.mark.parametrize(
    ("text", "topic", "expected"),
    [
        ("Is my insurance accepted?", "insurance", True),
        ("Am I insured for this?", "insurance", True),
        ("I want to dispute this bill", "billing dispute", True),
        ("I got my bill today, thanks", "billing dispute", False),
        ("Can I take more medicine for the pain?", "medication", True),
        ("What medications can I take?", "medication", True),
        ("What time do you open?", "medication", False),
        ("I have a clinical question", "clinical question", True),
        ("what are the clinic hours", "clinical question", False),
        ("anything", "", False),
    ],
)
def test_topic_matching(text: str, topic: str, expected: bool) -> None:
    assert mentions_phrase(text, topic) is expected


def test_stem_keeps_short_words() -> None:
    assert stem("bill") == "bill"
    assert stem("billing") == "bill"
    assert stem("insurance") == "insur"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("This is ridiculous", True),
        ("How many times do I have to say it", True),
        ("I already told you my name", True),
        ("this is a waste of my time", True),
        ("Thanks, that's great", False),
        ("Could you book me for Tuesday?", False),
    ],
)
def test_frustration(text: str, expected: bool) -> None:
    assert is_frustrated(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", True),
        ("yes please", True),
        ("Yeah, go ahead.", True),
        ("That's right", True),
        ("Sounds good", True),
        ("No", False),
        ("yes but actually make it Wednesday", False),
        ("wait", False),
        ("not yet", False),
        ("what?", False),
        ("", False),
    ],
)
def test_affirmative(text: str, expected: bool) -> None:
    assert is_affirmative(text) is expected


def test_confused_agent_phrases() -> None:
    assert agent_sounds_confused("Sorry, I didn't catch that.")
    assert agent_sounds_confused("Could you repeat that please?")
    assert not agent_sounds_confused("I can't get you in on Sunday, we're closed.")
    assert not agent_sounds_confused("Sure, Tuesday at 9 works.")


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_matchers_never_raise(text: str) -> None:
    asks_for_human(text)
    is_frustrated(text)
    is_affirmative(text)
    agent_sounds_confused(text)
    mentions_phrase(text, "billing dispute")


RULES = (
    EscalationRule("caller_asks_for_human", "desk"),
    EscalationRule("topic", "billing", say="Staff handle that.", topics=("billing dispute",)),
    EscalationRule("misunderstanding", "desk", count=2),
    EscalationRule("low_confidence", "desk", count=2, below=0.5),
    EscalationRule("tool_failure", "desk"),
)


def test_first_matching_rule_wins_in_policy_order() -> None:
    rules = EscalationRules(RULES)
    decision = rules.before_llm("get me a person about a billing dispute", confidence=None, dtmf=False)
    assert decision is not None and decision.kind == "caller_asks_for_human"
    rules = EscalationRules(tuple(reversed(RULES)))
    decision = rules.before_llm("get me a person about a billing dispute", confidence=None, dtmf=False)
    assert decision is not None and (decision.kind, decision.target) == ("topic", "billing")
    assert decision.say == "Staff handle that."


def test_keypad_input_skips_text_rules() -> None:
    rules = EscalationRules(RULES)
    assert rules.before_llm("operator", confidence=None, dtmf=True) is None


def test_low_confidence_needs_consecutive_turns() -> None:
    rules = EscalationRules(RULES)
    assert rules.before_llm("a", confidence=0.3, dtmf=False) is None
    assert rules.before_llm("b", confidence=0.8, dtmf=False) is None
    assert rules.before_llm("c", confidence=0.3, dtmf=False) is None
    decision = rules.before_llm("d", confidence=0.1, dtmf=False)
    assert decision is not None and decision.kind == "low_confidence"
    # The streak restarts after firing; no confidence (keypad/engine without) leaves it alone.
    assert rules.before_llm("e", confidence=None, dtmf=False) is None
    assert rules.before_llm("f", confidence=0.2, dtmf=False) is None


def test_misunderstanding_streak() -> None:
    rules = EscalationRules(RULES)
    assert rules.after_reply("", "Sure.", failed=False) is None  # nothing heard: 1
    assert rules.after_reply("book", "Okay, which day?", failed=False) is None  # reset
    assert rules.after_reply("zzz", "Sorry, could you repeat that?", failed=False) is None
    decision = rules.after_reply("book", "Okay.", failed=True)
    assert decision is not None and decision.kind == "misunderstanding"


def test_tool_failure_and_outside_hours_without_rules() -> None:
    rules = EscalationRules(RULES)
    assert rules.tool_failure("x: timed out") is not None
    assert rules.outside_hours() is None
    assert EscalationRules(()).tool_failure("x") is None


def test_rules_from_policy_models() -> None:
    from agentd.dialog.policy import parse_policy

    policy = parse_policy(
        """
agent: {name: A, organisation: O, persona: p, greeting: hi, goodbye: bye}
escalation:
  targets: {desk: "100"}
  rules:
    - {when: misunderstanding, target: desk}
    - {when: topic, topics: [insurance], target: desk, say: Staff do that.}
"""
    )
    converted = rules_from_policy(policy.escalation.rules)
    assert converted[0].count == 2  # the policy's default streak
    assert converted[1].topics == ("insurance",) and converted[1].say == "Staff do that."
