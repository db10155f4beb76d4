"""Normalising what callers say (via ASR) into comparable keys: spoken numbers, order
numbers, phone numbers and names."""

from __future__ import annotations

import difflib
import re
import unicodedata

_UNITS = {
    "zero": 0, "oh": 0, "o": 0, "nought": 0, "one": 1, "two": 2, "three": 3, "four": 4,
    "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11,
    "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}  # fmt: skip
_ORDINAL_UNITS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17,
    "eighteenth": 18, "nineteenth": 19,
}  # fmt: skip
_ORDINAL_TENS = {"twentieth": 20, "thirtieth": 30}
_REPEAT = {"double": 2, "triple": 3}
_WORD = re.compile(r"[a-z]+|\d+|\S", re.IGNORECASE)


def _small_number(tokens: list[str], i: int) -> tuple[int, int] | None:
    """A number 0-99 spoken at tokens[i] ("twenty three", "fifth"): (value, tokens used)."""
    word = tokens[i].lower()
    if word in _UNITS and word != "o":
        return _UNITS[word], 1
    if word in _ORDINAL_UNITS:
        return _ORDINAL_UNITS[word], 1
    if word in _ORDINAL_TENS:
        return _ORDINAL_TENS[word], 1
    if word in _TENS:
        if i + 1 < len(tokens):
            nxt = tokens[i + 1].lower()
            unit = _UNITS.get(nxt, _ORDINAL_UNITS.get(nxt))
            if unit is not None and 1 <= unit <= 9 and nxt not in ("oh", "o"):
                return _TENS[word] + unit, 2
        return _TENS[word], 1
    return None


def _number_run(tokens: list[str], i: int) -> tuple[list[int], int] | None:
    """A run of spoken numbers at tokens[i]: the values of its groups and tokens used.
    "nineteen eighty five" -> [1985]; "two thousand and three" -> [2003];
    "one two three" -> [1, 2, 3]; "double seven" -> [7, 7]."""
    groups: list[int] = []
    j = i
    while j < len(tokens):
        word = tokens[j].lower()
        if word in _REPEAT and j + 1 < len(tokens):
            rep = _small_number(tokens, j + 1)
            if rep is None or rep[0] > 9:
                break
            groups.extend([rep[0]] * _REPEAT[word])
            j += 1 + rep[1]
            continue
        if word == "o" and groups:  # "nineteen o five": the letter O read as zero
            groups.append(0)
            j += 1
            continue
        small = _small_number(tokens, j)
        if small is None:
            break
        value, used = small
        j += used
        # "two thousand (and) three", "one hundred (and) five"
        if j < len(tokens) and tokens[j].lower() in ("thousand", "hundred"):
            scale = 1000 if tokens[j].lower() == "thousand" else 100
            value *= scale
            j += 1
            if scale == 1000 and j < len(tokens) and tokens[j].lower() == "hundred":
                j += 1  # malformed; ignore
            k = j + 1 if j < len(tokens) and tokens[j].lower() == "and" else j
            if k < len(tokens):
                rest = _small_number(tokens, k)
                if rest is not None:
                    value += rest[0]
                    j = k + rest[1]
        groups.append(value)
    if j == i:
        return None
    return _join_years(groups), j - i


def _join_years(groups: list[int]) -> list[int]:
    """Two-group years: "nineteen eighty five" [19, 85] -> 1985, "nineteen oh five"
    [19, 0, 5] -> 1905, "twenty twenty" [20, 20] -> 2020."""
    if len(groups) == 2 and 10 <= groups[0] <= 20 and 10 <= groups[1] <= 99:
        return [groups[0] * 100 + groups[1]]
    if len(groups) == 3 and 10 <= groups[0] <= 20 and groups[1] == 0 and groups[2] <= 9:
        return [groups[0] * 100 + groups[2]]
    return groups


def words_to_digits(text: str) -> str:
    """Replace spoken numbers with digits, keeping everything else ("the third of May
    nineteen eighty five" -> "the 3 of May 1985")."""
    tokens = _WORD.findall(re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text, flags=re.IGNORECASE))
    out: list[str] = []
    i = 0
    while i < len(tokens):
        run = _number_run(tokens, i)
        if run is None:
            out.append(tokens[i])
            i += 1
        else:
            groups, used = run
            out.extend(str(g) for g in groups)
            i += used
    return " ".join(out)


def normalise_key(text: str) -> str:
    """An order number or reference as said or typed, reduced to upper-case letters and
    digits: "A B 1 2 3", "ab-123" and "a b one two three" all become "AB123"."""
    return re.sub(r"[^A-Z0-9]", "", words_to_digits(fold(text)).upper())


def fold(text: str) -> str:
    """Strip accents (NFKD, drop combining marks)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


PHONE_KEY_DIGITS = 9


def phone_key(text: str | None) -> str | None:
    """A phone number or SIP caller ID reduced to its last 9 digits, so "+44 7700 900123",
    "07700900123", "0044 7700 900 123" and "sip:+447700900123@pbx" compare equal without
    knowing the country. None when it has fewer than 6 digits (an extension, withheld)."""
    if not text:
        return None
    user = text
    match = re.search(r"sips?:([^@;>]+)", text, re.IGNORECASE)
    if match:
        user = match.group(1)
    digits = re.sub(r"\D", "", words_to_digits(user))
    if len(digits) < 6:
        return None
    return digits[-PHONE_KEY_DIGITS:]


def normalise_name(text: str) -> str:
    """Lower-case, accents removed, punctuation dropped, single spaces."""
    folded = fold(text).lower()
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", folded.replace("'", "")).split())


_NAME_TITLES = {"mr", "mrs", "ms", "miss", "dr", "mx", "sir", "madam", "prof"}


def name_similarity(said: str, recorded: str) -> float:
    """How alike two personal names are (0..1), tolerant of case, accents, titles, word
    order and small ASR slips ("Jon Smyth" vs "John Smith")."""
    a = [w for w in normalise_name(said).split() if w not in _NAME_TITLES]
    b = [w for w in normalise_name(recorded).split() if w not in _NAME_TITLES]
    if not a or not b:
        return 0.0
    direct = difflib.SequenceMatcher(None, " ".join(a), " ".join(b)).ratio()
    ordered = difflib.SequenceMatcher(None, " ".join(sorted(a)), " ".join(sorted(b))).ratio()
    return max(direct, ordered)
