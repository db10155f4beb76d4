"""The speech test set: caller utterances spoken by non-agent voices, as the agent hears them.

Reference texts and voices live in `tests/speech/testset/utterances.yaml` (committed); the
audio is generated deterministically into a cache directory (not committed):

    testset = build_testset()            # builds once, then loads from .cache/speech-testset/
    for clip in testset.select(lang="en", noisy=False):
        pcm = clip.audio()               # int16, 8 kHz, through G.711 mu-law

Each clip is a voice's rendering of one utterance, resampled to 8 kHz, scaled to the voice's
active-speech level, padded with silence, and passed through a G.711 mu-law round trip; a
noisy copy gets seeded white noise at the configured SNR before the G.711 step. The build
directory is named by a hash of the spec, the generator version and the voice programs'
versions, so editing the texts or voices (or upgrading espeak-ng) rebuilds it.

`transcript_wer` / `corpus_wer` score ASR output against the references after a normaliser
that makes "2:30" and "two thirty", "14th" and "fourteenth", "5,000" and "five thousand" equal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agentd.media.g711 import ulaw_decode, ulaw_encode
from agentd.media.resample import StreamResampler
from agentd.speech.interfaces import TELEPHONE_RATE, SpeechError
from agentd.speech.metrics import word_errors  # re-exported: the scorer's distance

__all__ = [
    "Clip",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_SPEC_PATH",
    "TestSet",
    "TestSetError",
    "TestSetSpec",
    "Utterance",
    "Voice",
    "active_speech_power",
    "build_testset",
    "corpus_wer",
    "load_spec",
    "measured_snr_db",
    "normalize_transcript",
    "spec_hash",
    "speech_edges",
    "transcript_wer",
]

GENERATOR_VERSION = 1  # bump when the rendering below changes what the audio sounds like
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SPEC_PATH = REPO_ROOT / "tests" / "speech" / "testset" / "utterances.yaml"
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "speech-testset"
CACHE_ENV = "AGENTD_SPEECH_TESTSET"  # overrides DEFAULT_CACHE_DIR
MANIFEST_NAME = "manifest.json"
ENGINES = ("espeak", "flite", "hibari")

_FRAME = 160  # 20 ms: frames for the active-speech level
_EDGE_FRAME = 40  # 5 ms: frames for the speech edges
_ACTIVE_RANGE_DB = 40.0  # frames this far under the loudest frame are pauses, not speech
_ACTIVE_FLOOR_DBFS = -60.0
_FULL_SCALE = 32768.0


class TestSetError(SpeechError):
    """The spec is invalid or a voice program is missing; the message says which."""

    __test__ = False  # not a pytest test class


# ---- spec ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Voice:
    id: str
    engine: str  # espeak | flite | hibari
    name: str  # the engine's voice name (espeak "en-us+f3", flite "slt", hibari "heart")
    lang: str = "en"
    rate: int = 175  # espeak words per minute
    pitch: int = 50  # espeak 0..99
    speed: float = 1.0  # hibari
    level_dbfs: float = -20.0  # active-speech level the clip is scaled to


@dataclass(frozen=True)
class Utterance:
    id: str
    text: str  # the reference: what an ASR should output
    say: str  # what the voice reads
    flow: str
    lang: str
    voice: str  # a Voice.id


@dataclass(frozen=True)
class TestSetSpec:
    __test__ = False

    voices: tuple[Voice, ...]
    utterances: tuple[Utterance, ...]
    snr_db: float
    padding_s: tuple[float, float]
    raw: dict[str, Any]  # the parsed YAML, for the hash

    def voice(self, voice_id: str) -> Voice:
        for voice in self.voices:
            if voice.id == voice_id:
                return voice
        raise KeyError(voice_id)


def load_spec(path: str | Path = DEFAULT_SPEC_PATH) -> TestSetSpec:
    """Parse and check utterances.yaml; voices are assigned round-robin per language."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TestSetError(f"cannot read the test set spec {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise TestSetError(f"{path}: expected a mapping at the top level")
    try:
        voices = tuple(_voice(v) for v in raw["voices"])
        snr_db = float(raw.get("noise", {}).get("snr_db", 20.0))
        before, after = (float(x) for x in raw.get("padding_s", (0.3, 0.3)))
        entries = list(raw["utterances"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TestSetError(f"{path}: malformed spec ({exc!r})") from exc
    by_id = {v.id: v for v in voices}
    if len(by_id) != len(voices):
        raise TestSetError(f"{path}: duplicate voice ids")
    turns: dict[str, int] = {}
    utterances = []
    for entry in entries:
        if not isinstance(entry, dict) or not entry.get("id") or not str(
            entry.get("text", "")
        ).strip():
            raise TestSetError(
                f"{path}: every utterance needs an id and a non-empty text: {entry!r}"
            )
        lang = str(entry.get("lang", "en"))
        voice_id = entry.get("voice")
        if voice_id is None:
            pool = [v for v in voices if v.lang == lang]
            if not pool:
                raise TestSetError(f"{path}: no voice for language {lang!r}")
            voice_id = pool[turns.get(lang, 0) % len(pool)].id
            turns[lang] = turns.get(lang, 0) + 1
        if voice_id not in by_id:
            raise TestSetError(f"{path}: utterance {entry['id']} names unknown voice {voice_id}")
        text = str(entry["text"]).strip()
        utterances.append(
            Utterance(
                id=str(entry["id"]), text=text, say=str(entry.get("say", text)).strip(),
                flow=str(entry.get("flow", "")), lang=lang, voice=str(voice_id),
            )
        )
    if len({u.id for u in utterances}) != len(utterances):
        raise TestSetError(f"{path}: duplicate utterance ids")
    return TestSetSpec(voices, tuple(utterances), snr_db, (before, after), raw)


def _voice(entry: dict[str, Any]) -> Voice:
    voice = Voice(**{k: entry[k] for k in entry})
    if voice.engine not in ENGINES:
        raise ValueError(f"voice {voice.id}: engine must be one of {ENGINES}")
    if voice.engine == "espeak" and (voice.name.startswith("-") or " " in voice.name):
        raise ValueError(f"voice {voice.id}: bad espeak voice name")
    return voice


def tool_versions(spec: TestSetSpec) -> dict[str, str]:
    """Versions of the voice programs the spec uses (a new version may sound different)."""
    engines = {v.engine for v in spec.voices}
    versions: dict[str, str] = {}
    if "espeak" in engines:
        versions["espeak"] = _program_version(["espeak-ng", "--version"])
    if "flite" in engines:
        versions["flite"] = _program_version(["flite", "--version"])
    if "hibari" in engines:
        try:
            from importlib.metadata import version

            versions["hibari"] = version("hibari-tts")
        except Exception:  # not installed: the build says so
            versions["hibari"] = "missing"
    return versions


def _program_version(command: list[str]) -> str:
    binary = shutil.which(command[0])
    if binary is None:
        return "missing"
    done = subprocess.run(command, capture_output=True, timeout=10, check=False)
    text = (done.stdout + done.stderr).decode("utf-8", "replace")
    return " ".join(text.split())[:200]


def spec_hash(spec: TestSetSpec, versions: dict[str, str] | None = None) -> str:
    """sha256 of what decides the audio: the spec, the generator and the programs."""
    payload = {
        "generator": GENERATOR_VERSION,
        "spec": spec.raw,
        "tools": versions if versions is not None else tool_versions(spec),
    }
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ---- the built set -------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    id: str  # utterance id, with ".noisy" for the noisy copy
    utterance: str
    path: Path
    text: str
    voice: str
    engine: str
    lang: str
    flow: str
    noisy: bool
    snr_db: float | None
    duration: float  # seconds
    speech_start: float  # seconds from the clip's start where speech begins...
    speech_end: float  # ... and ends (energy edges of the clean rendering)

    def audio(self) -> np.ndarray:
        """The clip as int16 at 8 kHz."""
        return read_wav(self.path)


@dataclass(frozen=True)
class TestSet:
    __test__ = False

    root: Path
    spec_hash: str
    content_hash: str  # sha256 over every clip's samples, in order
    clips: tuple[Clip, ...]

    def select(
        self, *, lang: str | None = None, noisy: bool | None = None,
        engines: Iterable[str] | None = None, limit: int | None = None,
    ) -> list[Clip]:
        wanted = set(engines) if engines is not None else None
        chosen = [
            c for c in self.clips
            if (lang is None or c.lang == lang)
            and (noisy is None or c.noisy == noisy)
            and (wanted is None or c.engine in wanted)
        ]
        return chosen if limit is None else spread(chosen, limit)


def spread(items: Sequence[Any], count: int) -> list[Any]:
    """`count` items evenly spaced through `items` (so a subset still mixes voices)."""
    if count >= len(items):
        return list(items)
    if count <= 0:
        return []
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def build_testset(
    cache_dir: str | Path | None = None, *, spec_path: str | Path = DEFAULT_SPEC_PATH,
    force: bool = False,
) -> TestSet:
    """Load the test set from `cache_dir`, building it first if missing or out of date.

    `cache_dir` defaults to $AGENTD_SPEECH_TESTSET, else `.cache/speech-testset/` in the
    checkout. Builds go to a temporary directory renamed into place, so concurrent builders
    and interrupted builds never leave a half-written set behind.
    """
    base = Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)
    spec = load_spec(spec_path)
    digest = spec_hash(spec)
    target = base / digest[:16]
    if not force:
        loaded = _load(target, digest)
        if loaded is not None:
            return loaded
    base.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".build-{digest[:16]}-", dir=base))
    try:
        _render_all(spec, digest, building)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            building.rename(target)
        except OSError:  # another process put a set there meanwhile: use theirs
            pass
    finally:
        shutil.rmtree(building, ignore_errors=True)
    for stale in base.iterdir():  # older builds of other specs
        if stale.is_dir() and stale.name != target.name and not stale.name.startswith(".build-"):
            shutil.rmtree(stale, ignore_errors=True)
    loaded = _load(target, digest)
    if loaded is None:
        raise TestSetError(f"test set build in {target} left no complete manifest")
    return loaded


def _load(root: Path, digest: str) -> TestSet | None:
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("spec_hash") != digest:
        return None
    clips = []
    for entry in manifest.get("clips", []):
        path = root / entry["path"]
        if not path.is_file():
            return None
        clips.append(Clip(**{**entry, "path": path}))
    return TestSet(root, digest, str(manifest["content_hash"]), tuple(clips))


# ---- rendering -----------------------------------------------------------------------------


def _render_all(spec: TestSetSpec, digest: str, out_dir: Path) -> None:
    (out_dir / "clips").mkdir()
    voices = {v.id: v for v in spec.voices}
    renderers: dict[str, Any] = {}
    content = hashlib.sha256()
    entries: list[dict[str, Any]] = []
    before, after = spec.padding_s
    for utterance in spec.utterances:
        voice = voices[utterance.voice]
        try:
            speech = _render(voice, utterance.say, renderers)
        except (SpeechError, subprocess.SubprocessError, OSError) as exc:
            if isinstance(exc, TestSetError):
                raise
            raise TestSetError(f"voice {voice.id} cannot speak {utterance.id!r}: {exc}") from exc
        if speech.size == 0 or not np.any(speech):
            raise TestSetError(f"voice {voice.id} made no sound for {utterance.id!r}")
        scaled = _scale_to_level(speech, voice.level_dbfs)
        clean = np.concatenate(
            (_zeros(before), scaled, _zeros(after))
        )
        start, end = speech_edges(clean)
        noise_power = active_speech_power(clean) / 10 ** (spec.snr_db / 10)
        seed = int.from_bytes(hashlib.sha256(utterance.id.encode()).digest()[:8], "little")
        noise = np.random.default_rng(seed).normal(0.0, np.sqrt(noise_power), clean.shape)
        noisy = np.clip(np.rint(clean.astype(np.float64) + noise), -32768, 32767).astype(np.int16)
        for is_noisy, pcm in ((False, clean), (True, noisy)):
            phone = ulaw_decode(ulaw_encode(pcm))
            clip_id = f"{utterance.id}.noisy" if is_noisy else utterance.id
            relative = f"clips/{clip_id}.wav"
            write_wav(out_dir / relative, phone)
            content.update(clip_id.encode() + b"\0" + phone.tobytes())
            entries.append(
                {
                    "id": clip_id, "utterance": utterance.id, "path": relative,
                    "text": utterance.text, "voice": voice.id, "engine": voice.engine,
                    "lang": utterance.lang, "flow": utterance.flow, "noisy": is_noisy,
                    "snr_db": spec.snr_db if is_noisy else None,
                    "duration": round(len(phone) / TELEPHONE_RATE, 4),
                    "speech_start": round(start, 4), "speech_end": round(end, 4),
                }
            )
    manifest = {
        "spec_hash": digest,
        "content_hash": content.hexdigest(),
        "generator": GENERATOR_VERSION,
        "rate": TELEPHONE_RATE,
        "clips": entries,
    }
    (out_dir / MANIFEST_NAME).write_text(
        json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def _zeros(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * TELEPHONE_RATE)), dtype=np.int16)


def _render(voice: Voice, text: str, renderers: dict[str, Any]) -> np.ndarray:
    """`text` in `voice`, as int16 at 8 kHz (not yet level-scaled or padded)."""
    if voice.engine == "flite":
        return _flite(voice.name, text)
    key = f"{voice.engine}:{voice.name}:{voice.rate}:{voice.pitch}:{voice.speed}"
    engine = renderers.get(key)
    if engine is None:
        engine = renderers[key] = _make_engine(voice)
    return np.concatenate([np.asarray(c, dtype=np.int16) for c in engine.synthesize(text)] or [
        np.zeros(0, dtype=np.int16)
    ])


def _make_engine(voice: Voice) -> Any:
    if voice.engine == "espeak":
        from agentd.speech.tts_espeak import EspeakTts

        return EspeakTts(voice.name, rate_wpm=voice.rate, pitch=voice.pitch)
    try:
        from agentd.speech.tts_hibari import HibariTts
    except ImportError as exc:  # pragma: no cover - the module itself always imports
        raise TestSetError(f"hibari voice {voice.id} needs hibari-tts: {exc}") from exc
    # One thread and a fixed seed: the same audio on every build.
    return HibariTts(1, voice=voice.name, speed=voice.speed, seed=0)


def _flite(voice: str, text: str) -> np.ndarray:
    if shutil.which("flite") is None:
        raise TestSetError("the test set's flite voices need flite (apt-get install flite)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        # Arguments, never a shell; "-t" takes the text as one argument.
        subprocess.run(
            ["flite", "-voice", voice, "-o", str(out), "-t", text],
            capture_output=True, timeout=60, check=True,
        )
        native, rate = _read_any_wav(out)
    resampler = StreamResampler(rate, TELEPHONE_RATE)
    return np.concatenate((resampler.process(native), resampler.flush()))


def _scale_to_level(pcm: np.ndarray, level_dbfs: float) -> np.ndarray:
    power = active_speech_power(pcm)
    if power <= 0.0:
        return pcm
    gain = _FULL_SCALE * 10 ** (level_dbfs / 20) / np.sqrt(power)
    return np.clip(np.rint(pcm.astype(np.float64) * gain), -32768, 32767).astype(np.int16)


# ---- signal measures ---------------------------------------------------------------------


def _frame_rms(pcm: np.ndarray, size: int) -> np.ndarray:
    samples = np.asarray(pcm, dtype=np.float64).reshape(-1)
    count = len(samples) // size
    frames = samples[: count * size].reshape(count, size)
    return np.sqrt(np.mean(frames * frames, axis=1))


def _active_threshold(rms: np.ndarray) -> float:
    loudest = float(rms.max()) if rms.size else 0.0
    floor = _FULL_SCALE * 10 ** (_ACTIVE_FLOOR_DBFS / 20)
    return max(floor, loudest * 10 ** (-_ACTIVE_RANGE_DB / 20))


def active_speech_power(pcm: np.ndarray) -> float:
    """Mean square over the 20 ms frames within 40 dB of the loudest (pauses excluded)."""
    rms = _frame_rms(pcm, _FRAME)
    if rms.size == 0:
        return 0.0
    active = rms[rms > _active_threshold(rms)]
    return float(np.mean(active * active)) if active.size else 0.0


def measured_snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """SNR of `noisy` against the same clip without noise: active speech power over the
    power of the difference."""
    difference = np.asarray(noisy, dtype=np.float64) - np.asarray(clean, dtype=np.float64)
    noise_power = float(np.mean(difference * difference))
    if noise_power == 0.0:
        return float("inf")
    return 10 * np.log10(active_speech_power(clean) / noise_power)


def speech_edges(pcm: np.ndarray) -> tuple[float, float]:
    """(start, end) seconds of the first and last 5 ms frame of sound in a clean clip."""
    rms = _frame_rms(pcm, _EDGE_FRAME)
    active = np.flatnonzero(rms > _active_threshold(rms)) if rms.size else np.zeros(0)
    if active.size == 0:
        raise TestSetError("clip has no sound")
    return (
        float(active[0] * _EDGE_FRAME / TELEPHONE_RATE),
        float((active[-1] + 1) * _EDGE_FRAME / TELEPHONE_RATE),
    )


# ---- WAV files -----------------------------------------------------------------------------


def write_wav(path: Path, pcm: np.ndarray, rate: int = TELEPHONE_RATE) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.asarray(pcm, dtype="<i2").tobytes())


def read_wav(path: Path) -> np.ndarray:
    """An 8 kHz mono int16 WAV (as written by write_wav)."""
    pcm, rate = _read_any_wav(path)
    if rate != TELEPHONE_RATE:
        raise TestSetError(f"{path}: expected {TELEPHONE_RATE} Hz, got {rate}")
    return pcm


def _read_any_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise TestSetError(f"{path}: expected 16-bit samples")
        channels = wav.getnchannels()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
        return data.reshape(-1, channels)[:, 0].copy(), wav.getframerate()


# ---- transcript normalisation and WER --------------------------------------------------------

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19,
}
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17,
    "eighteenth": 18, "nineteenth": 19, "twentieth": 20, "thirtieth": 30,
}
_SCALES = {"hundred": 100, "thousand": 1000}
# Spellings an ASR may pick for the same words; both sides are mapped to the right side.
_VARIANTS = {
    "ok": "okay", "alright": "all right", "mhm": "mm hmm", "mmhmm": "mm hmm",
    "uhhuh": "uh huh", "dr": "doctor", "mr": "mister", "mrs": "missus", "st": "street",
    "post code": "postcode", "zipcode": "zip code", "cancelled": "canceled",
    "i'm": "i am", "i'd": "i would", "it's": "it is", "that's": "that is",
    "don't": "do not", "can't": "cannot", "can not": "cannot", "we're": "we are",
    "you're": "you are", "what's": "what is", "there's": "there is", "isn't": "is not",
    "won't": "will not", "didn't": "did not", "let's": "let us", "i've": "i have",
    "doesn't": "does not", "hasn't": "has not", "haven't": "have not",
}
_ORDINAL_SUFFIX = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_MONEY = re.compile(r"\$(\d+(?:\.\d+)?)")
_PERCENT = re.compile(r"(\d)\s*%")
_AM_PM = re.compile(r"\b([ap])\.\s?m\.")
_ALNUM_MIXED = re.compile(r"^(?=.*[a-z])(?=.*\d)[a-z0-9]+$")
_SPELLED = re.compile(r"\b[A-Z]{2,4}\b")
_NOT_WORD = re.compile(r"[^\w' ]+|_")  # any script's letters and digits stay (Korean too)


def normalize_transcript(text: str) -> str:
    """Lower-case words in a canonical spelling: numbers as single digits ("2:30" and "two
    thirty" -> "2 3 0"), ordinals as numbers, spelled letters and postcodes as single
    characters, contractions expanded, punctuation dropped."""
    text = text.replace("’", "'").replace("‘", "'")
    text = _SPELLED.sub(lambda m: " ".join(m.group(0)) if m.group(0) != "OK" else "okay", text)
    text = text.lower()
    text = _AM_PM.sub(r"\1m", text)
    text = _THOUSANDS_COMMA.sub("", text)
    text = _MONEY.sub(r"\1 dollars", text)
    text = _PERCENT.sub(r"\1 percent", text)
    text = _ORDINAL_SUFFIX.sub(r"\1", text)
    text = re.sub(r"(?<=\d)[:.](?=\d)", " ", text)  # 2:30, 10.30
    words = _NOT_WORD.sub(" ", text.replace("-", " ")).split()
    words = _apply_variants(words)
    words = _numbers_to_digits(words)
    out: list[str] = []
    for word in words:
        if word.isdigit() or _ALNUM_MIXED.match(word):
            out.extend(word)  # one token per digit or letter: "482719", "sw1a"
        else:
            out.append(word)
    return " ".join(out)


def _apply_variants(words: list[str]) -> list[str]:
    joined = " " + " ".join(words) + " "
    for variant, canonical in _VARIANTS.items():
        joined = joined.replace(f" {variant} ", f" {canonical} ")
        joined = joined.replace(f" {variant} ", f" {canonical} ")  # overlapping matches
    return joined.split()


def _numbers_to_digits(words: list[str]) -> list[str]:
    """Runs of number words -> digit strings; a run splits where a speaker would pause
    ("two thirty" is 2 30, "four eight" is 4 8, "twenty five" is 25)."""
    out: list[str] = []
    current: int | None = None  # the number being read, below 1000 ...
    total = 0  # ... plus what came before "thousand"

    def flush() -> None:
        nonlocal current, total
        if current is not None or total:
            out.append(str(total + (current or 0)))
        current, total = None, 0

    for index, word in enumerate(words):
        nxt = words[index + 1] if index + 1 < len(words) else ""
        if word in _UNITS or word in _TENS or word in _ORDINALS:
            value = _UNITS.get(word, _TENS.get(word, _ORDINALS.get(word, 0)))
            if current is not None and not _joins(total + current, value):
                flush()
            current = (current or 0) + value
            if word in _ORDINALS:
                flush()
        elif word in _SCALES and (current is not None or word == "hundred" and out[-1:] == ["a"]):
            if current is None:  # "a hundred"
                out.pop()
                current = 1
            if word == "hundred" and current < 100:
                current *= 100
            elif word == "thousand" and not total:
                total, current = (current or 1) * 1000, 0
            else:
                flush()
                out.append(word)
        elif word == "and" and current is not None and total + current >= 100 and (
            nxt in _UNITS or nxt in _TENS
        ):
            continue  # "one hundred and fifty"
        else:
            flush()
            out.append(word)
    flush()
    return [w for w in out if w]


def _joins(current: int, value: int) -> bool:
    """Whether a number word `value` continues the number read so far."""
    below_hundred = current % 100
    if value < 10:  # "twenty five", "one hundred five"
        return below_hundred % 10 == 0 and below_hundred != 10 and (
            below_hundred >= 20 or (below_hundred == 0 and current >= 100)
        )
    return below_hundred == 0 and current >= 100  # "one hundred twenty", "two thousand ten"


def transcript_wer(reference: str, hypothesis: str) -> float:
    """Word error rate after `normalize_transcript` on both sides (an empty reference
    scores 0.0 against an empty hypothesis, else 1.0)."""
    ref = normalize_transcript(reference).split()
    hyp = normalize_transcript(hypothesis).split()
    if not ref:
        return 0.0 if not hyp else 1.0
    return word_errors(ref, hyp) / len(ref)


def reference_words(reference: str) -> int:
    return len(normalize_transcript(reference).split())


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """Total word errors over total reference words, for (reference, hypothesis) pairs."""
    errors = words = 0
    for reference, hypothesis in pairs:
        ref = normalize_transcript(reference).split()
        errors += word_errors(ref, normalize_transcript(hypothesis).split())
        words += len(ref)
    return errors / words if words else 0.0


def clip_summary(clips: Sequence[Clip]) -> dict[str, Any]:
    """Counts and seconds per voice, for the generator's printout."""
    per_voice: dict[str, dict[str, float]] = {}
    for clip in clips:
        entry = per_voice.setdefault(clip.voice, {"clips": 0, "seconds": 0.0})
        entry["clips"] += 1
        entry["seconds"] += clip.duration
    return per_voice


def clip_dict(clip: Clip) -> dict[str, Any]:
    data = asdict(clip)
    data["path"] = str(clip.path)
    return data
