"""Call records in SQLite: one row per call, per turn and per tool call.

Each write is its own transaction, committed before the method returns, so a crash (even
`kill -9`) loses at most the turn in flight. WAL with synchronous=NORMAL: commits do not
wait for fsync, which survives a process crash (not a power cut, where the last commits
before the cut may go). One connection shared under a lock: safe from any thread; each call
takes well under a millisecond on a local disk, short enough for the event loop.

The file and its -wal/-shm companions are mode 0600: caller numbers and transcripts are
personal data, readable by the service user only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Self

from agentd.records.model import (
    LATENCY_FIELDS,
    OUTCOMES,
    SPEAKERS,
    CallEnd,
    CallRecord,
    JsonDict,
    Outcome,
    RecordError,
    ToolCall,
    Turn,
    TurnLatency,
)

__all__ = ["SCHEMA_VERSION", "CallStore", "default_database_path"]

log = logging.getLogger("agentd.records")

SCHEMA_VERSION = 1
SYSTEM_STATE_DIR = Path("/var/lib/agentd")
DATABASE_NAME = "calls.db"

_LATENCY_COLUMNS = ", ".join(f"{name} REAL" for name in LATENCY_FIELDS)

# Index i holds the statements taking a database from version i to i + 1. Version 0 is an
# empty file. A later schema change appends a step (ALTER TABLE ...); never edit a step.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE calls (
            id INTEGER PRIMARY KEY,
            ref TEXT NOT NULL,
            call_id TEXT NOT NULL,
            caller TEXT,
            ringing_at REAL NOT NULL,
            answered_at REAL,
            ended_at REAL,
            outcome TEXT CHECK (outcome IN ('contained', 'transferred', 'abandoned', 'failed')),
            end_reason TEXT,
            transfer_target TEXT,
            transfer_reason TEXT,
            recording_path TEXT,
            handoff_json TEXT
        )""",
        "CREATE INDEX calls_ref ON calls (ref)",
        "CREATE INDEX calls_ringing_at ON calls (ringing_at)",
        f"""CREATE TABLE turns (
            call INTEGER NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            speaker TEXT NOT NULL CHECK (speaker IN ('caller', 'agent', 'system')),
            text TEXT NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL,
            interrupted INTEGER NOT NULL DEFAULT 0,
            {_LATENCY_COLUMNS},
            PRIMARY KEY (call, idx)
        )""",
        """CREATE TABLE tool_calls (
            id INTEGER PRIMARY KEY,
            call INTEGER NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
            turn INTEGER,
            name TEXT NOT NULL,
            arguments_json TEXT NOT NULL,
            result_json TEXT,
            error TEXT,
            ok INTEGER NOT NULL,
            latency_ms REAL
        )""",
        "CREATE INDEX tool_calls_call ON tool_calls (call)",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

_CALL_COLUMNS = (
    "id, ref, call_id, caller, ringing_at, answered_at, ended_at, outcome, end_reason, "
    "transfer_target, transfer_reason, recording_path, handoff_json, "
    "(SELECT COUNT(*) FROM turns WHERE turns.call = calls.id)"
)


def default_database_path() -> Path:
    """$STATE_DIRECTORY/calls.db (systemd's StateDirectory), else /var/lib/agentd/calls.db."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state or SYSTEM_STATE_DIR) / DATABASE_NAME


def _json(value: Mapping[str, Any] | None) -> str | None:
    if value is None:
        return None
    # default=str: an odd value in a tool result must not lose the whole record.
    return json.dumps(dict(value), ensure_ascii=False, default=str, sort_keys=True)


def _unjson(text: str | None) -> JsonDict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return {"unreadable": text}
    return value if isinstance(value, dict) else {"value": value}


def _time(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RecordError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise RecordError(f"{name} must be finite, got {value!r}")
    return number


def _required_time(value: float, name: str) -> float:
    number = _time(value, name)
    if number is None:
        raise RecordError(f"{name} is required")
    return number


def _private_file(path: Path) -> None:
    """Create `path` as an empty 0600 file, or tighten an existing one to 0600."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("call records %s were mode %o; setting 0600", path, mode)
            os.chmod(path, 0o600)
        return
    os.close(fd)


class CallStore:
    """Call records in the SQLite file `path` (created, mode 0600, unless create=False).

    Every method raises only `RecordError`. Calls are addressed by their reference (the
    short id `CallLeg.reference` that logs and hand-offs use).
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}  # ref -> row id of calls started here, not yet ended
        try:
            if create:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                _private_file(self.path)
            elif not self.path.is_file():
                raise RecordError(f"no call records at {self.path}")
            self._db = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
        except OSError as exc:
            raise RecordError(f"cannot open call records {self.path}: {exc}") from None
        except sqlite3.Error as exc:
            raise RecordError(f"cannot open call records {self.path}: {exc}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (sqlite3.Error, RecordError) as exc:
            self._db.close()
            if isinstance(exc, RecordError):
                raise
            raise RecordError(f"cannot open call records {self.path}: {exc}") from None

    # ---- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._version()

    def _version(self) -> int:
        has_table = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if not has_table:
            return 0
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._version()
                if version > SCHEMA_VERSION:
                    raise RecordError(
                        f"call records {self.path} have schema version {version}, newer than "
                        f"this agentd understands ({SCHEMA_VERSION}); upgrade agentd"
                    )
                if version == 0:
                    self._db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                    self._db.execute("INSERT INTO schema_version VALUES (0)")
                for step in _MIGRATIONS[version:]:
                    for statement in step:
                        self._db.execute(statement)
                self._db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _write(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        """Run one statement as its own committed transaction (the caller holds the lock)."""
        try:
            return self._db.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            raise RecordError(f"rejected record: {exc}") from None
        except sqlite3.Error as exc:
            raise RecordError(f"cannot write call records {self.path}: {exc}") from None

    def _call_row(self, ref: str) -> int:
        row_id = self._open.get(ref)
        if row_id is not None:
            return row_id
        try:
            row = self._db.execute(
                "SELECT id FROM calls WHERE ref = ? ORDER BY id DESC LIMIT 1", (ref,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise RecordError(f"cannot read call records {self.path}: {exc}") from None
        if row is None:
            raise RecordError(f"unknown call {ref!r}")
        return int(row[0])

    # ---- writes ---------------------------------------------------------------------------

    def start_call(
        self,
        ref: str,
        *,
        call_id: str,
        caller: str | None,
        at: float,
        recording_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """A call is ringing (INVITE accepted)."""
        if not isinstance(ref, str) or not ref:
            raise RecordError(f"call reference must be a non-empty string, got {ref!r}")
        ringing_at = _required_time(at, "at")
        with self._lock:
            cursor = self._write(
                "INSERT INTO calls (ref, call_id, caller, ringing_at, recording_path) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    ref,
                    str(call_id),
                    caller,
                    ringing_at,
                    None if recording_path is None else os.fspath(recording_path),
                ),
            )
            assert cursor.lastrowid is not None
            self._open[ref] = cursor.lastrowid

    def answered(self, ref: str, at: float) -> None:
        answered_at = _required_time(at, "at")
        with self._lock:
            self._write(
                "UPDATE calls SET answered_at = ? WHERE id = ?", (answered_at, self._call_row(ref))
            )

    def set_recording(self, ref: str, path: str | os.PathLike[str]) -> None:
        with self._lock:
            self._write(
                "UPDATE calls SET recording_path = ? WHERE id = ?",
                (os.fspath(path), self._call_row(ref)),
            )

    def add_turn(self, ref: str, turn: Turn) -> None:
        """Store (commit) one turn; a turn with an index already stored replaces it, so the
        loop may write an agent turn when it starts and again when it ends or is cut off."""
        if turn.speaker not in SPEAKERS:
            raise RecordError(f"speaker must be one of {', '.join(SPEAKERS)}, got {turn.speaker!r}")
        if not isinstance(turn.index, int) or turn.index < 0:
            raise RecordError(f"turn index must be a non-negative int, got {turn.index!r}")
        latency = tuple(_time(getattr(turn.latency, name), name) for name in LATENCY_FIELDS)
        columns = ", ".join(LATENCY_FIELDS)
        marks = ", ".join("?" * len(LATENCY_FIELDS))
        updates = ", ".join(
            f"{name} = excluded.{name}"
            for name in (
                "speaker",
                "text",
                "started_at",
                "ended_at",
                "interrupted",
                *LATENCY_FIELDS,
            )
        )
        params = (
            turn.index,
            turn.speaker,
            str(turn.text),
            _required_time(turn.started_at, "started_at"),
            _time(turn.ended_at, "ended_at"),
            int(bool(turn.interrupted)),
            *latency,
        )
        with self._lock:
            self._write(
                f"INSERT INTO turns (call, idx, speaker, text, started_at, ended_at, interrupted, "
                f"{columns}) VALUES (?, ?, ?, ?, ?, ?, ?, {marks}) "
                f"ON CONFLICT (call, idx) DO UPDATE SET {updates}",
                (self._call_row(ref), *params),
            )

    def add_tool_call(self, ref: str, call: ToolCall) -> None:
        params = (
            call.turn,
            str(call.name),
            _json(call.arguments) or "{}",
            _json(call.result),
            call.error,
            int(bool(call.ok)),
            _time(call.latency_ms, "latency_ms"),
        )
        with self._lock:
            self._write(
                "INSERT INTO tool_calls (call, turn, name, arguments_json, result_json, error, "
                "ok, latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (self._call_row(ref), *params),
            )

    def end_call(self, ref: str, end: CallEnd) -> None:
        if end.outcome not in OUTCOMES:
            raise RecordError(f"outcome must be one of {', '.join(OUTCOMES)}, got {end.outcome!r}")
        params = (
            _required_time(end.ended_at, "ended_at"),
            end.outcome,
            end.reason,
            end.transfer_target,
            end.transfer_reason,
            _json(end.handoff),
        )
        with self._lock:
            self._write(
                "UPDATE calls SET ended_at = ?, outcome = ?, end_reason = ?, transfer_target = ?, "
                "transfer_reason = ?, handoff_json = ? WHERE id = ?",
                (*params, self._call_row(ref)),
            )
            self._open.pop(ref, None)

    def close_orphans(self, reason: str = "agentd stopped during the call") -> int:
        """Mark calls left open by a previous process (crash, kill) as failed, ending them
        at the last thing known to have happened. Run at start-up by the daemon only, never
        by a reader (the daemon's live calls are open too). Returns how many."""
        with self._lock:
            open_rows = tuple(self._open.values())
            exclude = f"AND id NOT IN ({', '.join('?' * len(open_rows))})" if open_rows else ""
            cursor = self._write(
                "UPDATE calls SET outcome = 'failed', end_reason = ?, ended_at = COALESCE("
                "(SELECT MAX(COALESCE(turns.ended_at, turns.started_at)) FROM turns "
                "WHERE turns.call = calls.id), answered_at, ringing_at) "
                f"WHERE ended_at IS NULL {exclude}",
                (reason, *open_rows),
            )
        return cursor.rowcount

    def delete_before(self, cutoff: float) -> tuple[int, list[str]]:
        """Delete calls that rang before `cutoff` (with their turns and tool calls); returns
        how many, and their recording paths so the caller can remove the files."""
        limit = _required_time(cutoff, "cutoff")
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                rows = self._db.execute(
                    "SELECT id, recording_path FROM calls WHERE ringing_at < ?", (limit,)
                ).fetchall()
                open_rows = set(self._open.values())
                doomed = [(row_id, path) for row_id, path in rows if row_id not in open_rows]
                self._db.executemany(
                    "DELETE FROM calls WHERE id = ?", [(row_id,) for row_id, _ in doomed]
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise RecordError(f"cannot delete old call records: {exc}") from None
        return len(doomed), [path for _, path in doomed if path]

    # ---- reads ----------------------------------------------------------------------------

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise RecordError(f"cannot read call records {self.path}: {exc}") from None

    @staticmethod
    def _record(
        row: tuple[Any, ...], turns: tuple[Turn, ...] = (), tool_calls: tuple[ToolCall, ...] = ()
    ) -> CallRecord:
        outcome: Outcome | None = row[7] if row[7] in OUTCOMES else None
        return CallRecord(
            id=row[0],
            ref=row[1],
            call_id=row[2],
            caller=row[3],
            ringing_at=row[4],
            answered_at=row[5],
            ended_at=row[6],
            outcome=outcome,
            end_reason=row[8],
            transfer_target=row[9],
            transfer_reason=row[10],
            recording_path=row[11],
            handoff=_unjson(row[12]),
            turn_count=int(row[13]),
            turns=turns,
            tool_calls=tool_calls,
        )

    def _full(self, row: tuple[Any, ...]) -> CallRecord:
        turn_rows = self._read(
            f"SELECT idx, speaker, text, started_at, ended_at, interrupted, "
            f"{', '.join(LATENCY_FIELDS)} FROM turns WHERE call = ? ORDER BY idx",
            (row[0],),
        )
        turns = tuple(
            Turn(
                index=t[0],
                speaker=t[1],
                text=t[2],
                started_at=t[3],
                ended_at=t[4],
                interrupted=bool(t[5]),
                latency=TurnLatency(*t[6:]),
            )
            for t in turn_rows
        )
        tool_rows = self._read(
            "SELECT turn, name, arguments_json, ok, result_json, error, latency_ms "
            "FROM tool_calls WHERE call = ? ORDER BY id",
            (row[0],),
        )
        tools = tuple(
            ToolCall(
                turn=t[0],
                name=t[1],
                arguments=_unjson(t[2]) or {},
                ok=bool(t[3]),
                result=_unjson(t[4]),
                error=t[5],
                latency_ms=t[6] or 0.0,
            )
            for t in tool_rows
        )
        return self._record(row, turns, tools)

    def get(self, call_ref: str) -> CallRecord | None:
        """The call with this reference (the newest, should two share it), in full."""
        with self._lock:
            rows = self._read(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE ref = ? ORDER BY id DESC LIMIT 1",
                (call_ref,),
            )
            return self._full(rows[0]) if rows else None

    def list(
        self, limit: int = 50, since: float | None = None, outcome: Outcome | None = None
    ) -> list[CallRecord]:
        """Newest first, without turns (see `turn_count`)."""
        if outcome is not None and outcome not in OUTCOMES:
            raise RecordError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        where, params = self._filter(since, outcome)
        with self._lock:
            rows = self._read(
                f"SELECT {_CALL_COLUMNS} FROM calls {where} ORDER BY ringing_at DESC, id DESC "
                "LIMIT ?",
                (*params, max(0, int(limit))),
            )
        return [self._record(row) for row in rows]

    @staticmethod
    def _filter(since: float | None, outcome: str | None) -> tuple[str, tuple[Any, ...]]:
        clauses: list[str] = []
        params: list[Any] = []
        if since is not None:
            clauses.append("ringing_at >= ?")
            params.append(_required_time(since, "since"))
        if outcome is not None:
            clauses.append("outcome = ?")
            params.append(outcome)
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)

    def iter_calls(self, since: float | None = None, batch: int = 200) -> Iterator[CallRecord]:
        """Every call (in full), oldest first, read in batches so memory stays bounded."""
        where, params = self._filter(since, None)
        last_id = 0
        keyset = "AND id > ?" if where else "WHERE id > ?"
        while True:
            with self._lock:
                rows = self._read(
                    f"SELECT {_CALL_COLUMNS} FROM calls {where} {keyset} ORDER BY id LIMIT ?",
                    (*params, last_id, batch),
                )
                records = [self._full(row) for row in rows]
            yield from records
            if len(rows) < batch:
                return
            last_id = rows[-1][0]

    def export_jsonl(self, fp: IO[str], since: float | None = None) -> int:
        """Write each call as one JSON line (oldest first); returns how many."""
        count = 0
        for record in self.iter_calls(since):
            fp.write(json.dumps(record.to_json(), ensure_ascii=False, default=str) + "\n")
            count += 1
        return count
