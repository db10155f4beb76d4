"""Call records: SQLite store, `agentd calls`, call recordings and retention."""

from agentd.records.model import (
    CallEnd,
    CallObserver,
    CallObservers,
    CallRecord,
    Outcome,
    RecordError,
    ToolCall,
    Turn,
    TurnLatency,
    outcome_for,
)
from agentd.records.store import CallStore, StoreObserver, default_database_path

__all__ = [
    "CallEnd",
    "CallObserver",
    "CallObservers",
    "CallRecord",
    "CallStore",
    "Outcome",
    "RecordError",
    "StoreObserver",
    "ToolCall",
    "Turn",
    "TurnLatency",
    "default_database_path",
    "outcome_for",
]
