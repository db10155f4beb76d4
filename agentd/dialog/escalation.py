"""When a call must go to a human, decided in code (the model's own transfer choice is a
second line of defence, never the only one).

Pure functions over text and counters: the caller asks for a person, mentions a reserved
topic, sounds frustrated, is misunderstood N turns in a row, is heard with low ASR
confidence N turns in a row, a tool fails, or the business is closed. Matching is on words
with light stemming ("medication" also catches "medicine", "insurance" also "insured").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentd.dialog.policy import RuleKind  # the rule kinds the policy schema declares


@dataclass(frozen=True)
class EscalationRule:
    """One `escalation.rules` entry, independent of the policy's pydantic model."""

    when: RuleKind
    target: str | None
    say: str | None = None
    topics: tuple[str, ...] = ()
    count: int = 1
    below: float = 0.0


@dataclass(frozen=True)
class Escalation:
    """A rule fired: say `say` (if any), then transfer to `target` or (None) end the call."""

    kind: str  # a RuleKind, or "limit" / "keypad" for the session's own reasons
    target: str | None
    say: str | None
    reason: str


@dataclass
class EscalationCounters:
    """Per-call streaks the count-based rules look at."""

    misunderstood_in_row: int = 0
    low_confidence_in_row: int = 0


def rules_from_policy(rules: Iterable[Any]) -> tuple[EscalationRule, ...]:
    """Convert the policy's rule models (anything with the same attribute names)."""
    converted = []
    for rule in rules:
        converted.append(
            EscalationRule(
                when=rule.when,
                target=getattr(rule, "target", None),
                say=getattr(rule, "say", None),
                topics=tuple(getattr(rule, "topics", None) or ()),
                count=int(getattr(rule, "repeat_count", None) or getattr(rule, "count", None) or 1),
                below=float(getattr(rule, "below", None) or 0.0),
            )
        )
    return tuple(converted)


# ---- text matching ------------------------------------------------------------------------

_SUFFIXES = ("ations", "ation", "ings", "ing", "ance", "ence", "ical", "ies", "al", "es", "ed", "s")
_WORD_RE = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """Lower-case ASCII words (accents folded) of `text`."""
    text = text.replace("\u2019", "'")
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return _WORD_RE.findall(folded)


def stem(word: str) -> str:
    """A crude stem: strip one common suffix while at least four letters remain."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


_STOP = frozenset({"a", "an", "the", "of", "to", "my", "your", "about", "for", "and", "or", "on"})


def content_stems(phrase: str) -> list[str]:
    """The stemmed content words of `phrase`, in order: what `mentions_phrase` looks for."""
    return [stem(w) for w in words(phrase) if w not in _STOP]


def mentions_phrase(text: str, phrase: str) -> bool:
    """True when every content word of `phrase` (stemmed) starts some word of `text`."""
    wanted = content_stems(phrase)
    if not wanted:
        return False
    said = words(text)
    return all(any(w.startswith(stem_) for w in said) for stem_ in wanted)


_HUMAN = (
    r"human|person|real person|someone|somebody|agent|operator|receptionist|staff|"
    r"representative|rep|manager|supervisor|member of staff|live agent|people|"
    r"reception|front desk|the desk"
)
_ASKS_FOR_HUMAN = re.compile(
    r"\b(?:"
    rf"(?:speak|talk|chat)\s+(?:to|with)\s+(?:a|an|the|some|your|real|actual|\s)*(?:{_HUMAN})\b"
    rf"|(?:put|pass|transfer|connect|send|get)\s+me\s+(?:through\s+)?(?:to|with)\s+"
    rf"(?:a|an|the|some|your|real|actual|\s)*(?:{_HUMAN})\b"
    rf"|(?:get|give)\s+me\s+(?:a|an|the|some|real|actual|\s)*(?:human|person|operator|"
    r"receptionist|representative|manager|supervisor)\b"
    r"|(?:a\s+)?(?:real|actual|live)\s+(?:human|person|agent)\b"
    r"|\bhuman\s+(?:being|please)\b|\boperator\b|\brepresentative\b"
    r"|not\s+(?:a|an)\s+(?:robot|machine|bot|computer)"
    r"|(?:i\s+)?(?:want|need|would\s+like|'d\s+like)\s+(?:to\s+speak\s+to\s+)?(?:a|an)\s+"
    r"(?:human|person)\b"
    r")",
    re.IGNORECASE,
)


def asks_for_human(text: str) -> bool:
    """The caller asks for a person ("can I speak to someone", "operator", "real person")."""
    return _ASKS_FOR_HUMAN.search(_plain(text)) is not None


_FRUSTRATION = re.compile(
    r"\b(?:"
    r"ridiculous|useless|pointless|stupid|idiot\w*|rubbish|hopeless|pathetic|absurd|"
    r"frustrat\w*|annoy\w*|angry|furious|livid|fed up|sick (?:and tired )?of|"
    r"waste of (?:my )?time|(?:are you|you're|you are) not listening|"
    r"(?:are you|you) even listening|for god'?s sake|for (?:fuck|christ)'?s sake|"
    r"what the (?:hell|heck|fuck)|damn\w*|bloody|shit\w*|fuck\w*|crap|"
    r"(?:this|that) is (?:a )?(?:joke|unacceptable|outrageous|terrible|awful)|"
    r"unacceptable|outrageous|how many times|i (?:already|just) (?:told|said)"
    r")",
    re.IGNORECASE,
)


def is_frustrated(text: str) -> bool:
    """Angry or exasperated language ("this is ridiculous", "how many times", swearing)."""
    return _FRUSTRATION.search(_plain(text)) is not None


_CONFUSED_AGENT = re.compile(
    r"(?:didn't|did not|couldn't|could not|don't|do not|can't|cannot)\s+"
    r"(?:quite\s+)?(?:catch|understand|hear|follow)\b"
    r"|not sure (?:what|i) (?:you mean|understand|follow)"
    r"|(?:could|can|would) you (?:please )?(?:repeat|say (?:that|it) again|rephrase)"
    r"|(?:say|repeat) that again|pardon\?|sorry\?",
    re.IGNORECASE,
)


def agent_sounds_confused(say: str) -> bool:
    """The agent's reply says it did not understand (asks to repeat or rephrase)."""
    return _CONFUSED_AGENT.search(say.lower().replace("’", "'")) is not None


def unintelligible(text: str) -> bool:
    """Nothing usable was heard (empty or no letters/digits)."""
    return not words(text)


_YES = re.compile(
    r"^(?:yes|yeah|yep|yup|ya|aye|sure|ok|okay|alright|all right|correct|right|exactly|"
    r"absolutely|definitely|certainly|of course|please|please do|go ahead|do it|confirm\w*|"
    r"that'?s (?:right|correct|fine|great|perfect|good)|sounds (?:good|great|fine|perfect)|"
    r"perfect|great|fine|lovely|brilliant|that works|works for me|uh huh|mm hmm)\b",
    re.IGNORECASE,
)
_NO = re.compile(
    r"\b(?:no|nope|nah|not|don't|do not|wait|hold on|stop|cancel|wrong|actually|instead|"
    r"rather|but|incorrect|never mind|nevermind)\b",
    re.IGNORECASE,
)


def is_affirmative(text: str) -> bool:
    """A clear yes ("yes please", "that's right, go ahead") with no "no"/"wait"/"actually"."""
    plain = _plain(text).strip(" .,!")
    return _YES.search(plain) is not None and _NO.search(plain) is None


def _plain(text: str) -> str:
    return " ".join(words(text))


# ---- the rules ------------------------------------------------------------------------------


@dataclass
class EscalationRules:
    """The policy's rules in order; the first that fires wins."""

    rules: Sequence[EscalationRule]
    counters: EscalationCounters = field(default_factory=EscalationCounters)

    def first(self, kind: RuleKind) -> EscalationRule | None:
        return next((r for r in self.rules if r.when == kind), None)

    def before_llm(
        self, caller_text: str, *, confidence: float | None, dtmf: bool
    ) -> Escalation | None:
        """Checks on what the caller just said, run before the model sees it."""
        low = self._update_low_confidence(confidence, dtmf)
        if dtmf:
            return None
        for rule in self.rules:
            if rule.when == "caller_asks_for_human" and asks_for_human(caller_text):
                return _fire(rule, "caller asked for a human")
            if rule.when == "topic":
                topic = next((t for t in rule.topics if mentions_phrase(caller_text, t)), None)
                if topic is not None:
                    return _fire(rule, f"reserved topic: {topic}")
            if rule.when == "frustration" and is_frustrated(caller_text):
                return _fire(rule, "caller sounds frustrated")
            if rule.when == "low_confidence" and low.get(id(rule), False):
                return _fire(rule, f"speech not recognised clearly {rule.count} times in a row")
        return None

    def after_reply(self, caller_text: str, agent_say: str, *, failed: bool) -> Escalation | None:
        """Count a misunderstood turn (nothing heard, the agent asks to repeat, or the model
        failed) and fire the misunderstanding rule when its streak is reached."""
        misunderstood = failed or unintelligible(caller_text) or agent_sounds_confused(agent_say)
        if misunderstood:
            self.counters.misunderstood_in_row += 1
        else:
            self.counters.misunderstood_in_row = 0
        rule = self.first("misunderstanding")
        if rule is not None and self.counters.misunderstood_in_row >= rule.count:
            self.counters.misunderstood_in_row = 0
            return _fire(rule, f"not understood {rule.count} turns in a row")
        return None

    def tool_failure(self, what: str) -> Escalation | None:
        rule = self.first("tool_failure")
        return None if rule is None else _fire(rule, f"tool failure: {what}")

    def outside_hours(self) -> Escalation | None:
        rule = self.first("outside_hours")
        return None if rule is None else _fire(rule, "outside business hours")

    def _update_low_confidence(self, confidence: float | None, dtmf: bool) -> dict[int, bool]:
        # Keypad input and engines without a confidence leave the streak unchanged.
        if dtmf or confidence is None:
            return {}
        fired: dict[int, bool] = {}
        rules = [r for r in self.rules if r.when == "low_confidence"]
        threshold = max((r.below for r in rules), default=0.0)
        if confidence < threshold:
            self.counters.low_confidence_in_row += 1
        else:
            self.counters.low_confidence_in_row = 0
        for rule in rules:
            if confidence < rule.below and self.counters.low_confidence_in_row >= rule.count:
                fired[id(rule)] = True
        if fired:
            self.counters.low_confidence_in_row = 0
        return fired


def _fire(rule: EscalationRule, reason: str) -> Escalation:
    return Escalation(kind=rule.when, target=rule.target, say=rule.say, reason=reason)
