"""Whether a callable takes a keyword: engines and backends grew optional keywords (a
prefill's `stop`, an ASR stream's `partial`), and callers pass them only where accepted."""

from __future__ import annotations

import inspect
from typing import Any


def accepts_keyword(function: Any, name: str) -> bool:
    """True when `function` is callable and has a parameter called `name`."""
    try:
        return callable(function) and name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
