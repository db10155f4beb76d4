"""Fixed phrases ready as audio before any call: greeting, fillers, policy lines.

`PhraseBook` serves them from a `PhraseCache` (on disk, shared across restarts) when the
config names one, else from memory; either way they are synthesised once at start-up, so
the greeting goes out within one packet of the call starting.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import numpy as np

from agentd.speech.interfaces import TtsEngine


class PhraseBook:
    def __init__(self, tts: TtsEngine | None, cache: Any = None) -> None:
        self.tts = tts
        self.cache = cache  # agentd.speech.phrase_cache.PhraseCache or None
        self._memory: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(text: str) -> str:
        return " ".join(text.split())

    def get(self, text: str) -> np.ndarray | None:
        """The phrase's audio if it was warmed (never synthesises)."""
        key = self._key(text)
        with self._lock:
            audio = self._memory.get(key)
        if audio is None and self.cache is not None:
            audio = self.cache.get(text)
        return audio

    def add(self, text: str, audio: np.ndarray) -> None:
        """Store audio made elsewhere (tests, or a phrase recorded by a person)."""
        pcm = np.asarray(audio, dtype=np.int16).reshape(-1).copy()
        pcm.setflags(write=False)
        with self._lock:
            self._memory[self._key(text)] = pcm

    def warm(self, texts: Iterable[str]) -> int:
        """Synthesise every phrase not yet ready; returns how many were made."""
        made = 0
        for text in texts:
            if not self._key(text) or self.get(text) is not None:
                continue
            if self.cache is not None:
                made += self.cache.warm([text])
                continue
            if self.tts is None:
                continue
            parts = [np.asarray(c, dtype=np.int16).reshape(-1) for c in self.tts.synthesize(text)]
            if parts:
                self.add(text, np.concatenate(parts))
                made += 1
        return made


def policy_phrases(policy: Any) -> list[str]:
    """The fixed lines a policy can make the agent say (greeting, goodbye, re-prompts,
    hand-off lines, keypad lines, the transfer-failure line)."""
    lines: list[str] = []
    agent = getattr(policy, "agent", None)
    if agent is not None:
        lines += [agent.greeting, agent.goodbye]
    limits = getattr(policy, "limits", None)
    if limits is not None:
        lines += [limits.reprompt, limits.final_line]
    escalation = getattr(policy, "escalation", None)
    if escalation is not None:
        for target in getattr(escalation, "targets", {}):
            try:
                lines.append(policy.handoff_text(target))
            except Exception:  # a malformed hand-off template is the policy's problem
                pass
        failure = getattr(escalation, "on_transfer_failure", None)
        if failure is not None and getattr(failure, "say", None):
            lines.append(failure.say)
        for rule in getattr(escalation, "rules", ()):
            if getattr(rule, "say", None):
                lines.append(rule.say)
    for action in getattr(policy, "dtmf", {}).values():
        if getattr(action, "say", None):
            lines.append(action.say)
    return [line for line in dict.fromkeys(lines) if line]
