"""The models directory: where each model's files live and whether they are intact.

Layout: `<root>/<model id>/<file>` plus `<root>/<model id>/.agentd-model.json`, a receipt
written by fetch after every file was verified. The receipt records each file's sha256,
size and mtime, so `require()` at start-up can trust an unchanged file without re-hashing
hundreds of MB; `verify` (and any file whose size or mtime changed) hashes in full.
"""

from __future__ import annotations

import enum
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentd.models.manifest import Manifest, ModelSpec, PackageSource, load_manifest

RECEIPT_NAME = ".agentd-model.json"
ENV_MODELS_DIR = "AGENTD_MODELS_DIR"
SYSTEM_MODELS_DIR = Path("/var/lib/agentd/models")
_HASH_BLOCK = 1 << 20


class ModelError(RuntimeError):
    """A model could not be found, fetched or verified; the message says what to do."""


class ModelMissingError(ModelError):
    """A required model (or one of its files) is absent or corrupt. One-line message."""

    def __init__(self, model_id: str, path: Path | str, problem: str, command: str) -> None:
        self.model_id = model_id
        self.path = Path(path)
        self.problem = problem
        self.command = command
        super().__init__(f"model '{model_id}': {problem} {path}; fetch it with: {command}")


def default_models_dir() -> Path:
    """$AGENTD_MODELS_DIR, else `models/` of a source checkout, else /var/lib/agentd/models."""
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "models").is_dir():
        return checkout / "models"
    return SYSTEM_MODELS_DIR


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


class FileState(enum.Enum):
    OK = "OK"
    MISSING = "MISSING"
    CORRUPT = "CORRUPT"
    UNPINNED = "UNPINNED"  # present; the manifest pins no sha256 (matches the fetch receipt)


@dataclass(frozen=True)
class FileCheck:
    name: str
    path: Path
    state: FileState
    detail: str = ""
    sha256: str | None = None  # the file's digest when it was read or trusted from the receipt


@dataclass(frozen=True)
class ModelCheck:
    model_id: str
    files: tuple[FileCheck, ...]

    @property
    def ok(self) -> bool:
        """Every file present and intact (unpinned files count as intact)."""
        return bool(self.files) and all(
            f.state in (FileState.OK, FileState.UNPINNED) for f in self.files
        )

    @property
    def installed(self) -> bool:
        return bool(self.files) and all(f.state is not FileState.MISSING for f in self.files)

    @property
    def first_problem(self) -> FileCheck | None:
        return next(
            (f for f in self.files if f.state in (FileState.MISSING, FileState.CORRUPT)), None
        )


@dataclass(frozen=True)
class ReceiptEntry:
    sha256: str
    size: int
    mtime_ns: int


class ModelStore:
    """Read access to a models directory: `require(id)`, `file(id, name)`, `check(id)`."""

    def __init__(self, root: Path | str | None = None, manifest: Manifest | None = None) -> None:
        self.root = Path(root) if root is not None else default_models_dir()
        self._manifest = manifest

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = load_manifest()
        return self._manifest

    def spec(self, model_id: str) -> ModelSpec:
        return self.manifest.get(model_id)

    def model_dir(self, model_id: str) -> Path:
        return self.root / model_id

    def fetch_command(self, model_id: str) -> str:
        command = f"agentd models fetch {model_id}"
        if self.root.resolve() != default_models_dir().resolve():
            command += f" --models-dir {self.root}"
        return command

    # ---- the library API engines use --------------------------------------------------

    def require(self, model_id: str, full: bool = False) -> Path:
        """The model's directory once every file is present and intact, else
        ModelMissingError. `full` re-hashes every file instead of trusting the receipt."""
        spec = self.spec(model_id)
        if spec.is_package:
            return self._package_dir(spec)
        result = self.check(model_id, full=full)
        problem = result.first_problem
        if problem is not None:
            if problem.state is FileState.CORRUPT:
                what = f"corrupt file ({problem.detail})"
            elif problem.name == "*":
                what = "not installed, no files in"
            else:
                what = "missing file"
            raise ModelMissingError(model_id, problem.path, what, self.fetch_command(model_id))
        return self.model_dir(model_id)

    def file(self, model_id: str, name: str) -> Path:
        """Path of one file of an installed model (checked like `require`)."""
        directory = self.require(model_id)
        path = directory / name
        if not path.is_file():
            raise ModelMissingError(model_id, path, "missing file", self.fetch_command(model_id))
        return path

    # ---- state ----------------------------------------------------------------------

    def check(self, model_id: str, full: bool = True) -> ModelCheck:
        """Per-file state. Without `full`, a file whose size and mtime match the receipt
        (written after fetch verified it) is trusted without hashing."""
        spec = self.spec(model_id)
        if spec.is_package:
            try:
                path = self._package_dir(spec)
            except ModelMissingError as exc:
                return ModelCheck(model_id, (FileCheck(spec.id, exc.path, FileState.MISSING),))
            return ModelCheck(model_id, (FileCheck(spec.id, path, FileState.OK, "package"),))
        receipt = self.read_receipt(model_id)
        expected: list[tuple[str, str | None, int | None]] = [
            (f.name, f.sha256, f.size) for f in spec.files
        ]
        if spec.open_file_list:
            # Files not pinned in the manifest: the receipt is the file list.
            expected = [(name, None, entry.size) for name, entry in sorted(receipt.items())]
            if not expected:
                missing = FileCheck("*", self.model_dir(model_id), FileState.MISSING)
                return ModelCheck(model_id, (missing,))
        return ModelCheck(
            model_id,
            tuple(
                self._check_file(model_id, name, sha, size, receipt.get(name), full)
                for name, sha, size in expected
            ),
        )

    def _check_file(
        self,
        model_id: str,
        name: str,
        pinned_sha: str | None,
        pinned_size: int | None,
        receipt: ReceiptEntry | None,
        full: bool,
    ) -> FileCheck:
        path = self.model_dir(model_id) / name
        try:
            stat = path.stat()
        except OSError:
            return FileCheck(name, path, FileState.MISSING)
        if not path.is_file():
            return FileCheck(name, path, FileState.MISSING, "not a file")
        if pinned_size is not None and stat.st_size != pinned_size:
            detail = f"size {stat.st_size}, expected {pinned_size}"
            return FileCheck(name, path, FileState.CORRUPT, detail)
        want = pinned_sha or (receipt.sha256 if receipt else None)
        stamped = (
            receipt is not None
            and receipt.size == stat.st_size
            and receipt.mtime_ns == stat.st_mtime_ns
            and (pinned_sha is None or receipt.sha256 == pinned_sha)
        )
        if not full and stamped:
            actual = want
        else:
            actual = sha256_file(path)
        if want is not None and actual != want:
            return FileCheck(name, path, FileState.CORRUPT, f"sha256 {actual}, expected {want}")
        if pinned_sha is None:
            return FileCheck(
                name, path, FileState.UNPINNED, f"sha256 {actual} (not pinned)", actual
            )
        return FileCheck(name, path, FileState.OK, sha256=actual)

    def _package_dir(self, spec: ModelSpec) -> Path:
        source = next(s for s in spec.sources if isinstance(s, PackageSource))
        try:
            found = importlib.util.find_spec(source.module)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            raise ModelMissingError(
                spec.id,
                source.module,
                f"needs the Python package {source.distribution}=={source.version}, cannot import",
                f"pip install {source.distribution}=={source.version}",
            )
        return Path(next(iter(found.submodule_search_locations)))

    # ---- receipts -------------------------------------------------------------------

    def receipt_path(self, model_id: str) -> Path:
        return self.model_dir(model_id) / RECEIPT_NAME

    def read_receipt(self, model_id: str) -> dict[str, ReceiptEntry]:
        """name -> entry from the fetch receipt; {} when absent or unreadable."""
        try:
            data = json.loads(self.receipt_path(model_id).read_text(encoding="utf-8"))
            return {
                str(name): ReceiptEntry(str(e["sha256"]), int(e["size"]), int(e["mtime_ns"]))
                for name, e in data["files"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def write_receipt(
        self,
        model_id: str,
        hashes: dict[str, str],
        source: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Record the verified files (sha256 + current size/mtime), atomically."""
        directory = self.model_dir(model_id)
        files = {}
        for name, digest in sorted(hashes.items()):
            stat = (directory / name).stat()
            files[name] = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        body = {"id": model_id, "source": source, "files": files, **(extra or {})}
        temp = directory / (RECEIPT_NAME + ".tmp")
        temp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(temp, self.receipt_path(model_id))

    def iter_models(self) -> Iterator[ModelSpec]:
        yield from self.manifest.models.values()
