"""The shapes of the records the library returns where callers rely on their keys.

They are plain dictionaries at run time (what the CLI renders and ``--format json`` writes);
these TypedDicts let a type checker check the keys a caller reads.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict


class TableStatus(TypedDict):
    """One audited (or once audited) table, from ``audit.status()``."""

    table: str
    relid: int
    enabled: bool
    #: ok, disabled, triggers altered, triggers missing, triggers not ENABLE ALWAYS, table dropped
    state: str
    key_source: str
    key_columns: list[str]
    excluded_columns: list[str]
    capture_truncate: bool
    partitions: int
    triggers_expected: int
    triggers_present: int
    triggers_always: int
    history_since: datetime
    enabled_at: datetime
    disabled_at: datetime | None


class Finding(TypedDict):
    """One problem ``audit.doctor()`` found: ``fix`` is SQL that repairs it safely, or None."""

    severity: str
    object: str
    problem: str
    fix: str | None


class ChainProblem(TypedDict):
    """One problem of the hash chain or the registry journal (``verify``): the sealed block
    (``seq``) it is in, None when it concerns no one block."""

    seq: int | None
    problem: str
