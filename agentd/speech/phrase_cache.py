"""Pre-synthesised fixed phrases (greeting, fillers, goodbyes) on disk and in memory.

A phrase is keyed by sha256 of the engine's name, voice, optional `settings_key` (anything
else that changes the sound, e.g. espeak's rate and pitch) and the text with its whitespace
collapsed. Each phrase is one 8 kHz mono 16-bit WAV named `<key>.wav`, so an operator can
listen to it; files are written atomically and a corrupt one is re-synthesised.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agentd.speech.interfaces import TELEPHONE_RATE, CancelToken, TtsEngine

__all__ = ["PhraseCache", "PhraseCacheStats", "phrase_key"]

_KEY_VERSION = 1  # bump when the file format or the key's inputs change
_STALE_TEMP_S = 3600.0


@dataclass
class PhraseCacheStats:
    hits: int = 0  # served from memory or disk
    synthesized: int = 0  # phrases the engine made (and the cache stored)
    corrupt: int = 0  # unreadable files that were replaced
    write_errors: int = 0  # phrases that could not be stored (served anyway)


def normalize_text(text: str) -> str:
    return " ".join(text.split())


def phrase_key(engine_name: str, voice: str, text: str, settings: str = "") -> str:
    """The cache key (hex sha256) of one phrase spoken by one engine and voice."""
    identity = json.dumps(
        [_KEY_VERSION, engine_name, voice, settings, TELEPHONE_RATE, normalize_text(text)],
        ensure_ascii=False,
    )
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()


class PhraseCache:
    """Cache of whole phrases for one engine and voice. Thread-safe."""

    def __init__(self, engine: TtsEngine, cache_dir: str | Path) -> None:
        self.engine = engine
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.stats = PhraseCacheStats()
        self._memory: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """Temporary files left by a crash mid-write (old enough not to be in progress)."""
        cutoff = time.time() - _STALE_TEMP_S
        for leftover in self.cache_dir.glob(".*.tmp"):
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
            except OSError:
                pass

    def key(self, text: str) -> str:
        return phrase_key(
            self.engine.name, self.engine.voice, text,
            str(getattr(self.engine, "settings_key", "")),
        )

    def path(self, text: str) -> Path:
        return self.cache_dir / f"{self.key(text)}.wav"

    def get(self, text: str) -> np.ndarray | None:
        """The phrase's audio (read-only int16 at 8 kHz) if cached in memory or on disk."""
        key = self.key(text)
        with self._lock:
            audio = self._memory.get(key)
        if audio is None:
            audio = self._load(key)
            if audio is None:
                return None
            with self._lock:
                audio = self._memory.setdefault(key, audio)
        with self._lock:
            self.stats.hits += 1
        return audio

    def __contains__(self, text: str) -> bool:
        key = self.key(text)
        with self._lock:
            if key in self._memory:
                return True
        return self._load(key) is not None

    def warm(self, texts: Iterable[str]) -> int:
        """Load every phrase, synthesising the missing ones; returns how many were made."""
        made = 0
        for text in texts:
            if not normalize_text(text) or self.get(text) is not None:
                continue
            if self._synthesize_and_store(text, None) is not None:
                made += 1
        return made

    def synthesize_or_cached(self, text: str, cancel: CancelToken | None = None) -> np.ndarray:
        """The cached audio, or synthesise (and cache) it now. A cancelled synthesis returns
        what was made so far and is not cached."""
        cached = self.get(text)
        if cached is not None:
            return cached
        made = self._synthesize_and_store(text, cancel)
        return made if made is not None else np.zeros(0, dtype=np.int16)

    def chunks(
        self, text: str, cancel: CancelToken | None = None, chunk_samples: int = 1600
    ) -> Iterator[np.ndarray]:
        """Cached audio in chunks, like `TtsEngine.synthesize`; falls back to the live engine
        (streaming, not cached) when the phrase is not cached."""
        cached = self.get(text)
        if cached is None:
            yield from self.engine.synthesize(text, cancel)
            return
        for start in range(0, cached.size, chunk_samples):
            if cancel is not None and cancel.cancelled:
                return
            yield cached[start : start + chunk_samples]

    def _synthesize_and_store(self, text: str, cancel: CancelToken | None) -> np.ndarray | None:
        parts = [np.asarray(c, dtype=np.int16).reshape(-1) for c in
                 self.engine.synthesize(text, cancel)]
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
        if (cancel is not None and cancel.cancelled) or audio.size == 0:
            return audio if audio.size else None
        audio.setflags(write=False)
        key = self.key(text)
        try:
            self._write(key, audio)
        except OSError:
            with self._lock:
                self.stats.write_errors += 1
        with self._lock:
            self.stats.synthesized += 1
            self._memory[key] = audio
        return audio

    def _load(self, key: str) -> np.ndarray | None:
        path = self.cache_dir / f"{key}.wav"
        try:
            audio = _read_wav(path)
        except FileNotFoundError:
            return None
        except (OSError, EOFError, ValueError, wave.Error):
            with self._lock:
                self.stats.corrupt += 1
            try:
                path.unlink()
            except OSError:
                pass
            return None
        audio.setflags(write=False)
        return audio

    def _write(self, key: str, audio: np.ndarray) -> None:
        """Write to a temporary file in the same directory, then rename over: readers see
        the old file or the whole new one, never a partial one."""
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=self.cache_dir)
        try:
            with os.fdopen(fd, "wb") as raw:
                with wave.open(raw, "wb") as out:
                    out.setnchannels(1)
                    out.setsampwidth(2)
                    out.setframerate(TELEPHONE_RATE)
                    out.writeframes(audio.astype("<i2").tobytes())
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, self.cache_dir / f"{key}.wav")
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def _read_wav(path: Path) -> np.ndarray:
    """Samples of a cache file; ValueError unless it is complete 8 kHz mono 16-bit audio."""
    with wave.open(str(path), "rb") as src:
        if (src.getnchannels(), src.getsampwidth(), src.getframerate()) != (
            1, 2, TELEPHONE_RATE,
        ):
            raise ValueError(f"{path}: not 8 kHz mono 16-bit")
        frames = src.getnframes()
        raw = src.readframes(frames)
    if frames == 0 or len(raw) != frames * 2:
        raise ValueError(f"{path}: truncated")
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)
