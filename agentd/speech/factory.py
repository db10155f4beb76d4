"""Build the speech engines named by the `speech:` config section from the model store.

    store = speech_store(config.speech)
    vad, asr, tts = build_vad(config.speech, store), build_asr(...), build_tts(...)
    stream = vad.stream(vad_config(config.speech))

Engine modules are imported only when chosen, so an unused engine's dependencies (torch for
Coqui, vosk, piper) need not be installed. Every failure is a SpeechError with one line
saying what is wrong and how to fix it (e.g. `agentd models fetch <id>`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agentd.models import ManifestError, ModelError, ModelSpec, ModelStore
from agentd.speech.interfaces import AsrEngine, SpeechError, TtsEngine, VadConfig, VadModel

if TYPE_CHECKING:
    from agentd.config.schema import SpeechConfig
    from agentd.speech.phrase_cache import PhraseCache


def speech_store(cfg: SpeechConfig) -> ModelStore:
    """The store at `speech.models_dir` (default: the standard models directory)."""
    return ModelStore(cfg.models_dir)


def vad_config(cfg: SpeechConfig) -> VadConfig:
    vad = cfg.vad
    return VadConfig(
        threshold=vad.threshold,
        neg_threshold=vad.neg_threshold,
        min_speech_ms=vad.min_speech_ms,
        end_of_turn_ms=vad.end_of_turn_ms,
    )


def build_vad(cfg: SpeechConfig, store: ModelStore) -> VadModel:
    spec = _spec(store, cfg.vad.model, "vad", ("silero",), "speech.vad.model")
    onnx = _file_with_suffix(store, spec, ".onnx")
    from agentd.speech.vad_silero import SileroVad

    return SileroVad(onnx, threads=cfg.vad.threads)


def build_asr(cfg: SpeechConfig, store: ModelStore) -> AsrEngine:
    engine = cfg.asr.engine
    spec = _spec(store, cfg.asr.model, "asr", (engine,), "speech.asr.model")
    model_dir = _require(store, spec.id)
    if engine == "whisper":
        from agentd.speech.asr_whisper import WhisperAsr

        return WhisperAsr(
            model_dir,
            threads=cfg.asr.threads,
            final_beam_size=cfg.asr.final_beam_size,
            prompt=cfg.asr.prompt,
            denoise=cfg.asr.denoise,
            language=_language(spec, "en"),
            model_id=spec.id,
        )
    from agentd.speech.asr_vosk import VoskAsr

    return VoskAsr(model_dir, language=_language(spec, "en"), model_id=spec.id)


def build_tts(cfg: SpeechConfig, store: ModelStore) -> TtsEngine:
    tts = cfg.tts
    if tts.engine == "espeak":
        from agentd.speech.tts_espeak import EspeakTts

        return EspeakTts(tts.voice or "en-us")
    if tts.engine == "hibari":
        from agentd.speech.tts_hibari import DEFAULT_VOICE, HibariTts

        return HibariTts(tts.threads, voice=tts.voice or DEFAULT_VOICE)
    if tts.model is None:
        raise SpeechError(f"speech.tts.model: the {tts.engine} engine needs a model id")
    spec = _spec(store, tts.model, "tts", (tts.engine,), "speech.tts.model")
    if tts.engine == "piper":
        from agentd.speech.tts_piper import PiperTts

        model = _file_with_suffix(store, spec, ".onnx")
        config = _file_with_suffix(store, spec, ".onnx.json")
        return PiperTts(model, config, threads=tts.threads, model_id=spec.id)
    from agentd.speech.tts_coqui import CoquiTts

    model_dir = _require(store, spec.id)
    checkpoints = sorted(model_dir.glob("*.pth"))
    preferred = [p for p in checkpoints if p.name in ("model_file.pth", "model.pth")]
    if not (preferred or checkpoints):
        raise SpeechError(
            f"model '{spec.id}' has no *.pth checkpoint in {model_dir}; "
            f"fetch it with: {store.fetch_command(spec.id)}"
        )
    checkpoint = (preferred or checkpoints)[0]
    return CoquiTts(checkpoint, model_dir / "config.json", threads=tts.threads, model_id=spec.id)


def build_phrase_cache(cfg: SpeechConfig, tts: TtsEngine) -> PhraseCache | None:
    """A phrase cache in `speech.phrase_cache_dir` for `tts`, or None when unset."""
    if cfg.phrase_cache_dir is None:
        return None
    from agentd.speech.phrase_cache import PhraseCache

    return PhraseCache(tts, cfg.phrase_cache_dir)


# ---- helpers ------------------------------------------------------------------------


def _spec(
    store: ModelStore, model_id: str, kind: str, engines: tuple[str, ...], key: str
) -> ModelSpec:
    try:
        spec = store.spec(model_id)
    except ManifestError as exc:
        raise SpeechError(f"{key}: {exc}") from None
    if spec.kind != kind or spec.engine not in engines:
        raise SpeechError(
            f"{key}: '{model_id}' is a {spec.kind} model for {spec.engine}, "
            f"not a {kind} model for {' or '.join(engines)}"
        )
    return spec


def _require(store: ModelStore, model_id: str) -> Path:
    try:
        return store.require(model_id)
    except ModelError as exc:
        raise SpeechError(str(exc)) from exc


def _file_with_suffix(store: ModelStore, spec: ModelSpec, suffix: str) -> Path:
    names = [f.name for f in spec.files if f.name.endswith(suffix)]
    if suffix == ".onnx":
        names = [n for n in names if not n.endswith(".onnx.json")]
    if len(names) != 1:
        raise SpeechError(f"model '{spec.id}' has {len(names)} '*{suffix}' files in the manifest")
    try:
        return store.file(spec.id, names[0])
    except ModelError as exc:
        raise SpeechError(str(exc)) from exc


def _language(spec: ModelSpec, default: str) -> str:
    return (spec.language or default).split("-")[0]
