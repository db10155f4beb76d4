from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentd.models import Manifest, ModelStore, parse_manifest
from agentd.models.fetch import Fetcher

from .fakepypi import FakePypi, FakePypiServer


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_of(*models: dict[str, Any], groups: dict[str, list[str]] | None = None) -> Manifest:
    return parse_manifest({"version": 1, "models": list(models), "groups": groups or {}})


@pytest.fixture
def pypi() -> Iterator[FakePypi]:
    with FakePypiServer() as state:
        yield state


@pytest.fixture
def make_fetcher(tmp_path: Path, pypi: FakePypi) -> Iterator[Any]:
    made: list[Fetcher] = []

    def make(manifest: Manifest, **kwargs: Any) -> Fetcher:
        store = ModelStore(tmp_path / "models", manifest)
        options: dict[str, Any] = {
            "pypi_url": pypi.base,
            "backoff_s": 0.0,
            "retries": 3,
            "timeout_s": 10.0,
            "progress": False,
            "search_path": [],  # never pick up this venv's packages unless a test asks
            "log": lambda _message: None,
        }
        options.update(kwargs)
        fetcher = Fetcher(store, **options)
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        fetcher.close()
