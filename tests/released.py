"""Databases as earlier versions of pgaudit_tool left them, for upgrade tests.

``tests/fixtures/released/<revision>.sql.gz`` is the SQL that the tool of that revision ran
(``pgaudit-tool install --dry-run`` output of the release, frozen): ``0001`` installs revision
0001 on an empty database, ``0002`` upgrades 0001 to 0002, ``0003`` 0002 to 0003, ``0008``
0003 to 0008 (the last release with an unpartitioned log, commit c1e7354), ``0009`` 0008 to
0009 (commit 2bf1e07: the last release that re-applied its functions only when a revision ran
or with ``--repair``; its functions differ from today's).
They are artifacts, never edited: the current sources no longer contain the old function bodies.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import psycopg

RELEASED = Path(__file__).resolve().parent / "fixtures" / "released"
ORDER = ("0001", "0002", "0003", "0008", "0009")


def install_released(dsn: str, revision: str) -> None:
    """Install the audit schema at ``revision`` the way that release did."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for step in ORDER[: ORDER.index(revision) + 1]:
            with gzip.open(RELEASED / f"{step}.sql.gz", "rt", encoding="utf-8") as f:
                conn.execute(f.read())  # type: ignore[arg-type]  # BEGIN ... COMMIT inside
