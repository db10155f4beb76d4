"""Fallback TTS with Debian's espeak-ng binary: instant, robotic, always available.

espeak-ng runs as a subprocess per utterance (no shell: the text goes in on stdin), writes
a streamed WAV (22.05 kHz int16) to stdout, and we resample it to 8 kHz while it is still
being written. Cancelling kills the process.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time
import unicodedata
from collections.abc import Iterator
from typing import IO

import numpy as np

from agentd.media.resample import StreamResampler
from agentd.speech.interfaces import TELEPHONE_RATE, CancelToken, SpeechError

__all__ = ["EspeakTts"]

_READ_BYTES = 16384
_POLL_S = 0.02  # how often a waiting read looks at the cancel token
_HEADER_LIMIT = 4096  # a WAV header longer than this is not espeak-ng's
_STDERR_LIMIT = 4096


class EspeakTts:
    """`TtsEngine` on the espeak-ng command-line program. Thread-safe: no shared state."""

    name = "espeak-ng"
    native_rate = 22050

    def __init__(
        self,
        voice: str = "en-us",
        rate_wpm: int = 175,
        pitch: int = 50,
        *,
        binary: str = "espeak-ng",
        chunk_ms: int = 100,
        timeout_s: float = 30.0,
    ) -> None:
        if not 80 <= rate_wpm <= 500:
            raise ValueError(f"rate_wpm must be 80..500, got {rate_wpm}")
        if not 0 <= pitch <= 99:
            raise ValueError(f"pitch must be 0..99, got {pitch}")
        if chunk_ms <= 0 or timeout_s <= 0:
            raise ValueError("chunk_ms and timeout_s must be positive")
        if not voice or voice.startswith("-") or any(c.isspace() for c in voice):
            raise ValueError(f"bad espeak-ng voice name {voice!r}")
        path = shutil.which(binary)
        if path is None:
            raise SpeechError(
                f"espeak-ng binary {binary!r} not found (install it: apt-get install espeak-ng)"
            )
        self.binary = path
        self.voice = voice
        self.rate_wpm = rate_wpm
        self.pitch = pitch
        self.chunk_samples = TELEPHONE_RATE * chunk_ms // 1000
        self.timeout_s = timeout_s
        # What else changes the sound, for caches keyed on engine + voice + text.
        self.settings_key = f"rate={rate_wpm};pitch={pitch}"
        self._check_voice()

    def _command(self) -> list[str]:
        return [
            self.binary, "--stdout", "--stdin", "-b", "1",
            "-v", self.voice, "-s", str(self.rate_wpm), "-p", str(self.pitch),
        ]

    def _check_voice(self) -> None:
        """Fail at start-up, not mid-call, on a voice espeak-ng does not have."""
        try:
            done = subprocess.run(
                [self.binary, "-q", "-v", self.voice, "x"],
                capture_output=True, timeout=10, stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SpeechError(f"cannot run {self.binary}: {exc}") from exc
        if done.returncode != 0:
            detail = done.stderr.decode("utf-8", "replace").strip()
            raise SpeechError(
                f"espeak-ng voice {self.voice!r} is not available ({detail}); "
                "list voices with `espeak-ng --voices`"
            )

    def synthesize(
        self, text: str, cancel: CancelToken | None = None
    ) -> Iterator[np.ndarray]:
        """Yield 8 kHz int16 chunks of at most chunk_ms as espeak-ng produces them."""
        text = _clean_text(text)
        if not text or (cancel is not None and cancel.cancelled):
            return
        # stderr goes to a file: a pipe nobody reads could fill and stall the process.
        with tempfile.TemporaryFile() as errors:
            try:
                proc = subprocess.Popen(
                    self._command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=errors,
                )
            except OSError as exc:
                raise SpeechError(f"cannot start {self.binary}: {exc}") from exc
            try:
                yield from self._stream(proc, text, cancel, errors)
            finally:
                # Consumer stopped early, cancel, error or done: never leave it running.
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=5)
                for pipe in (proc.stdin, proc.stdout):
                    if pipe is not None:
                        pipe.close()

    def _stream(
        self, proc: subprocess.Popen[bytes], text: str, cancel: CancelToken | None,
        errors: IO[bytes],
    ) -> Iterator[np.ndarray]:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            # espeak-ng --stdin reads all input before it speaks, so this cannot deadlock.
            proc.stdin.write(text.encode("utf-8", "replace"))
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it exited early; the exit status below says why
        deadline = time.monotonic() + self.timeout_s
        fd = proc.stdout.fileno()
        header = b""
        resampler: StreamResampler | None = None
        odd = b""  # a sample split across two reads
        out = np.zeros(0, dtype=np.int16)
        while True:
            if cancel is not None and cancel.cancelled:
                return
            if time.monotonic() > deadline:
                raise SpeechError(f"espeak-ng took longer than {self.timeout_s} s")
            ready, _, _ = select.select([fd], [], [], _POLL_S)
            if not ready:
                continue
            data = os.read(fd, _READ_BYTES)
            if not data:
                break
            if resampler is None:
                header += data
                parsed = _parse_wav_header(header)
                if parsed is None:
                    if len(header) > _HEADER_LIMIT:
                        raise SpeechError("espeak-ng wrote no WAV header")
                    continue
                rate, data_offset = parsed
                resampler = StreamResampler(rate, TELEPHONE_RATE)
                data, header = header[data_offset:], b""
            data = odd + data
            whole = len(data) - len(data) % 2
            odd = data[whole:]
            if whole:
                samples = np.frombuffer(data[:whole], dtype="<i2").astype(np.int16)
                out = np.concatenate((out, resampler.process(samples)))
            while out.size >= self.chunk_samples:
                if cancel is not None and cancel.cancelled:
                    return
                chunk, out = out[: self.chunk_samples], out[self.chunk_samples :]
                yield chunk
        status = proc.wait(timeout=5)
        if status != 0 or resampler is None:
            errors.seek(0)
            detail = errors.read(_STDERR_LIMIT).decode("utf-8", "replace").strip()
            raise SpeechError(f"espeak-ng failed (exit {status}): {detail or 'no audio'}")
        out = np.concatenate((out, resampler.flush()))
        for start in range(0, out.size, self.chunk_samples):
            if cancel is not None and cancel.cancelled:
                return
            yield out[start : start + self.chunk_samples]


def _clean_text(text: str) -> str:
    """Control characters (NUL, escapes, form feeds...) become spaces; line breaks stay."""
    return "".join(
        ch if ch in "\n\t" or unicodedata.category(ch) != "Cc" else " " for ch in text
    ).strip()


def _parse_wav_header(data: bytes) -> tuple[int, int] | None:
    """(sample rate, offset of the first sample) of a streamed 16-bit mono WAV, or None
    while the header is incomplete. espeak-ng writes placeholder chunk sizes, so the data
    chunk's size is ignored."""
    if len(data) < 12:
        return None
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SpeechError("espeak-ng output is not a WAV stream")
    pos, rate = 12, None
    while pos + 8 <= len(data):
        tag = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if tag == b"data":
            if rate is None:
                raise SpeechError("espeak-ng WAV stream has no fmt chunk")
            return rate, pos + 8
        if pos + 8 + size > len(data):
            return None
        if tag == b"fmt ":
            channels = int.from_bytes(data[pos + 10 : pos + 12], "little")
            rate = int.from_bytes(data[pos + 12 : pos + 16], "little")
            bits = int.from_bytes(data[pos + 22 : pos + 24], "little")
            if channels != 1 or bits != 16 or rate <= 0:
                raise SpeechError(
                    f"unexpected espeak-ng audio format: {channels} ch, {bits} bit, {rate} Hz"
                )
        pos += 8 + size + (size & 1)
    return None
