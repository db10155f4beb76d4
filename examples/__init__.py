"""Worked examples: a dental practice, a web shop and a sales-leads line.

Each example is a folder with `policy.yaml`, `config.yaml`, `data/` (committed CSVs; the
SQLite files are built from them by the example's `seed.build`) and `scenarios/`.

    policy_path = prepare("dental", tmp_path)   # a fresh copy with its databases built
"""

from __future__ import annotations

import importlib
import shutil
from datetime import date
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent
NAMES = ("dental", "shop", "leads")


def build_data(name: str, data_dir: Path | None = None, *, start: date | None = None) -> list[Path]:
    """Build example `name`'s SQLite files into `data_dir` (default: its own data/)."""
    if name not in NAMES:
        raise ValueError(f"unknown example {name!r}; expected one of {', '.join(NAMES)}")
    seed = importlib.import_module(f"examples.{name}.seed")
    built: list[Path] = seed.build(data_dir, start=start)
    return built


def prepare(name: str, dest: Path, *, start: date | None = None) -> Path:
    """Copy example `name` into `dest/name` (CSVs, policy, config, scenarios, secrets), build
    its databases there, and return the copy's policy.yaml: each test or scenario run can
    book and change data without touching the checkout."""
    if name not in NAMES:
        raise ValueError(f"unknown example {name!r}; expected one of {', '.join(NAMES)}")
    target = Path(dest) / name
    shutil.copytree(
        EXAMPLES_DIR / name,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "*.sqlite", "*.sqlite-*", ".*.tmp"),
        dirs_exist_ok=True,
    )
    build_data(name, target / "data", start=start)
    return target / "policy.yaml"
