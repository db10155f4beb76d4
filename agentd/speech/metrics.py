"""Speech quality metrics used by tests and benchmarks."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["normalize_words", "wer", "word_errors"]

_NOT_WORD = re.compile(r"[^a-z0-9' ]+")


def normalize_words(text: str) -> list[str]:
    """Lower-case words without punctuation: what WER compares."""
    return _NOT_WORD.sub(" ", text.lower().replace("-", " ")).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: (substitutions + deletions + insertions) / reference words.

    An empty reference gives 0.0 for an empty hypothesis and 1.0 otherwise.
    """
    ref = normalize_words(reference)
    hyp = normalize_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return word_errors(ref, hyp) / len(ref)


def word_errors(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Substitutions + deletions + insertions (Levenshtein distance over words)."""
    # One row of the Levenshtein table over words.
    row = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, hyp_word in enumerate(hyp, 1):
            best = min(row[j] + 1, row[j - 1] + 1, diagonal + (ref_word != hyp_word))
            diagonal, row[j] = row[j], best
    return row[len(hyp)]
