"""SQLite access for the built-in tools: one connection per tool run (so runs on different
threads never share one), WAL journal, writes under BEGIN IMMEDIATE, every sqlite3 error
turned into a short ToolError."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from agentd.dialog.tools._text import normalise_key, phone_key
from agentd.dialog.types import ToolError

BUSY_TIMEOUT_S = 3.0
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_identifier(name: str, what: str) -> str:
    """Table and column names are interpolated into SQL, so they must be plain words."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"{what} {name!r} is not a plain SQL identifier")
    return name


@contextlib.contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """An autocommit connection (transactions are explicit) to an existing database, with
    `phone_key()` and `norm_key()` available as SQL functions."""
    if not path.is_file():
        raise ToolError("the records database is missing")
    try:
        conn = sqlite3.connect(
            f"file:{path}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None
        )
    except sqlite3.Error:
        raise ToolError("the records database cannot be opened") from None
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.create_function("phone_key", 1, _sql_phone_key, deterministic=True)
        conn.create_function("norm_key", 1, _sql_norm_key, deterministic=True)
        yield conn
    except sqlite3.Error as exc:
        raise ToolError(f"database error ({type(exc).__name__})") from None
    finally:
        conn.close()


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (take the write lock before reading what the write depends on, so a
    concurrent booking cannot slip in between); commit on success, roll back otherwise."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _sql_phone_key(value: object) -> str | None:
    return phone_key(str(value)) if value is not None else None


def _sql_norm_key(value: object) -> str | None:
    return normalise_key(str(value)) if value is not None else None
