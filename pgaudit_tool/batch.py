"""Batches of committed transactions, loaded for the detectors, and the baseline.

A batch is a set of committed transactions loaded into two temporary tables: one row per
transaction (its context), one per transaction, table and operation (its row count). The
detectors read a handful of aggregates of them (cells: one subject, client, table, operation and
minute), never the log row by row, so that evaluating a million changes costs a few scans. The
baseline (what each subject usually does) is built the same way from the baseline window, then
kept up to date with every batch judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pgaudit_tool.rules import Rules

_MAX_TXIDS = 20  # CELLS keeps 21 txids: one more tells that there are more


def subject_of(actor: str | None, db_user: str | None) -> str:
    """The key of whoever did it: ``actor:NAME`` or ``login:NAME``."""
    return f"actor:{actor}" if actor is not None else f"login:{db_user}"


# --------------------------------------------------------------------------- batches


def prepare(conn: psycopg.Connection[Any]) -> None:
    """The session's temporary tables (created once per connection, emptied per batch)."""
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS pgaudit_watch_tx (txid xid8 PRIMARY KEY,"
        " committed_at timestamptz, actor text, db_user text, client_addr inet,"
        " application_name text, started_at timestamptz)"
    )
    conn.execute(
        'CREATE TEMP TABLE IF NOT EXISTS pgaudit_watch_tt (txid xid8, relid oid, op "char",'
        " n bigint, role text, table_name text)"
    )


def load_batch(conn: psycopg.Connection[Any], source: str, params: Sequence[Any]) -> int:
    """Fill the batch tables with the transactions ``source`` selects (a FROM-clause over
    audit.transaction aliased t, with placeholders, written by this package); returns the number
    of changes."""
    conn.execute("DELETE FROM pg_temp.pgaudit_watch_tx")
    conn.execute("DELETE FROM pg_temp.pgaudit_watch_tt")
    fill = sql.SQL(
        "INSERT INTO pg_temp.pgaudit_watch_tx SELECT t.txid, coalesce(t.committed_at, t.started_at),"
        " t.actor, t.db_user, t.client_addr, t.application_name, t.started_at FROM "
    ) + sql.SQL(source)
    conn.execute(fill, params)
    # Statistics first, whatever the batch's size: without them the planner takes a temporary
    # table for a few pages and may join it to the whole log by a sequential scan.
    conn.execute("ANALYZE pg_temp.pgaudit_watch_tx")
    conn.execute(
        "INSERT INTO pg_temp.pgaudit_watch_tt SELECT c.txid, c.relid, c.op, count(*), min(c.role),"
        " min(pg_catalog.quote_ident(c.schema_name) || '.' || pg_catalog.quote_ident(c.table_name))"
        " FROM pg_temp.pgaudit_watch_tx AS x"
        " JOIN audit.change AS c ON c.txid = x.txid AND c.started_at = x.started_at"
        " GROUP BY c.txid, c.relid, c.op"
    )
    conn.execute("ANALYZE pg_temp.pgaudit_watch_tt")
    row = conn.execute(
        "SELECT count(*), coalesce(sum(n), 0)::bigint FROM pg_temp.pgaudit_watch_tt"
    ).fetchone()
    assert row is not None
    return int(row[1])


def fetch(
    conn: psycopg.Connection[Any], query: str | sql.SQL | sql.Composed, params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    """Every row of ``query`` as a dict."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


_CELLS = """
SELECT x.actor, x.db_user, pg_catalog.host(x.client_addr) AS client_addr, x.application_name,
       tt.relid::bigint AS relid, min(tt.table_name) AS table_name, tt.op,
       pg_catalog.date_trunc('minute', x.committed_at) AS minute,
       sum(tt.n)::bigint AS changes, count(DISTINCT tt.txid) AS transactions,
       min(x.committed_at) AS first_at, max(x.committed_at) AS last_at, min(tt.role) AS role,
       (pg_catalog.array_agg(DISTINCT tt.txid::text::bigint))[1:21] AS txids
  FROM pg_temp.pgaudit_watch_tt AS tt JOIN pg_temp.pgaudit_watch_tx AS x ON x.txid = tt.txid
 GROUP BY 1, 2, 3, 4, 5, 7, 8
"""

TX_TABLES = """
SELECT tt.txid::text::bigint AS txid, tt.relid::bigint AS relid, min(tt.table_name) AS table_name,
       sum(tt.n)::bigint AS total,
       pg_catalog.jsonb_object_agg(tt.op, tt.n) AS ops, min(tt.role) AS role,
       min(x.committed_at) AS at, min(x.actor) AS actor, min(x.db_user) AS db_user,
       min(pg_catalog.host(x.client_addr)) AS client_addr, min(x.application_name) AS application_name,
       (SELECT count(DISTINCT t2.relid) FROM pg_temp.pgaudit_watch_tt AS t2 WHERE t2.txid = tt.txid) AS tables_in_tx,
       (SELECT pg_catalog.sum(GREATEST(k.reltuples::bigint, s.n_live_tup, 0))
          FROM pg_catalog.pg_class AS k
          LEFT JOIN pg_catalog.pg_stat_all_tables AS s ON s.relid = k.oid
         WHERE k.oid = tt.relid AND k.relkind <> 'p'
            OR k.oid IN (SELECT p.relid FROM pg_catalog.pg_partition_tree(tt.relid::regclass) AS p
                          WHERE p.isleaf))::bigint AS table_rows
  FROM pg_temp.pgaudit_watch_tt AS tt JOIN pg_temp.pgaudit_watch_tx AS x ON x.txid = tt.txid
 WHERE EXISTS (SELECT FROM pg_catalog.pg_class AS e WHERE e.oid = tt.relid)
 GROUP BY tt.txid, tt.relid
HAVING sum(tt.n) >= %s OR bool_or(tt.op = 'T')
"""

SENSITIVE = """
SELECT c.id, c.txid::text::bigint AS txid, c.op, c.pk, col AS column_name,
       c.old -> col AS old_value, c.new -> col AS new_value, c.role,
       x.committed_at AS at, x.actor, x.db_user, pg_catalog.host(x.client_addr) AS client_addr,
       x.application_name,
       pg_catalog.quote_ident(c.schema_name) || '.' || pg_catalog.quote_ident(c.table_name) AS table_name,
       (SELECT count(*) FROM pg_temp.pgaudit_watch_tt AS t2 WHERE t2.txid = c.txid AND t2.relid <> c.relid) AS other_tables
  FROM pg_temp.pgaudit_watch_tx AS x
  JOIN audit.change AS c ON c.txid = x.txid AND c.started_at = x.started_at
  CROSS JOIN LATERAL pg_catalog.unnest(%s::text[]) AS col
 WHERE c.relid = %s::oid AND c.op IN ('I', 'U', 'D')
   AND (c.old -> col) IS DISTINCT FROM (c.new -> col)
 ORDER BY c.id
"""


@dataclass
class Cell:
    """Changes of one subject, client and application to one table by one operation in one
    minute of a batch."""

    actor: str | None
    db_user: str
    client_addr: str | None
    application_name: str | None
    relid: int
    table_name: str
    op: str
    minute: datetime
    changes: int
    transactions: int
    first_at: datetime
    last_at: datetime
    role: str | None
    txids: list[int]

    @property
    def subject(self) -> str:
        return subject_of(self.actor, self.db_user)


def cells(conn: psycopg.Connection[Any]) -> list[Cell]:
    return [Cell(**r) for r in fetch(conn, _CELLS)]


# --------------------------------------------------------------------------- the baseline


@dataclass
class Baseline:
    """What each subject usually does, over the baseline window before the changes judged."""

    window: timedelta
    pairs: dict[tuple[str, int], datetime] = field(default_factory=dict)
    clients: dict[tuple[str, str, str], datetime] = field(default_factory=dict)
    hours: dict[str, dict[int, int]] = field(default_factory=dict)
    largest: dict[str, int] = field(default_factory=dict)
    peaks: dict[tuple[str, int], int] = field(default_factory=dict)
    minutes: dict[str, dict[datetime, int]] = field(default_factory=dict)
    bursts: dict[tuple[str, str], datetime] = field(default_factory=dict)
    since: dict[int, datetime] = field(default_factory=dict)

    def history_start(self, relid: int | None = None) -> datetime | None:
        if relid is not None:
            return self.since.get(relid)
        return min(self.since.values(), default=None)

    def observe(self, batch: Iterable[Cell], largest: Mapping[str, int]) -> None:
        """Add a batch that has been judged."""
        for c in batch:
            subject = c.subject
            _later(self.pairs, (subject, c.relid), c.last_at)
            _later(self.clients, (c.db_user, "addr", c.client_addr or "local"), c.last_at)
            _later(self.clients, (c.db_user, "app", c.application_name or ""), c.last_at)
            hours = self.hours.setdefault(subject, {})
            hour = c.minute.astimezone(UTC).hour
            hours[hour] = hours.get(hour, 0) + c.transactions
            per_minute = self.minutes.setdefault(subject, {})
            per_minute[c.minute] = per_minute.get(c.minute, 0) + c.changes
        for subject, n in largest.items():
            self.largest[subject] = max(self.largest.get(subject, 0), n)

    def forget_before(self, instant: datetime) -> None:
        """Drop what happened before the window (pairs and clients); recent minutes only."""
        self.pairs = {k: v for k, v in self.pairs.items() if v >= instant}
        self.clients = {k: v for k, v in self.clients.items() if v >= instant}
        keep = instant + self.window - timedelta(hours=1)
        for subject, per_minute in self.minutes.items():
            self.minutes[subject] = {m: n for m, n in per_minute.items() if m >= keep}


def _later(d: dict[Any, datetime], key: Any, at: datetime) -> None:
    old = d.get(key)
    if old is None or at > old:
        d[key] = at


def load_baseline(
    conn: psycopg.Connection[Any], rules: Rules, source: str, params: Sequence[Any], end: datetime
) -> Baseline:
    """The baseline from the transactions ``source`` selects (see :func:`load_batch`)."""
    base = Baseline(rules.baseline)
    load_batch(conn, source, params)
    batch = cells(conn)
    base.observe(batch, largest_by_subject(conn))
    for window in {int(r.seconds("window") // 60) or 1 for r in rules.of("burst")}:
        for row in fetch(conn, _PEAKS, [f"{window - 1} minutes"]):
            base.peaks[(subject_of(row["actor"], row["db_user"]), window)] = int(row["peak"])
    base.forget_before(end - rules.baseline)
    for row in fetch(conn, _HISTORY_SINCE):
        base.since[row["relid"]] = row["history_since"]
    return base


#: When each audited table's history in the log starts: when capture began, or where the
#: partitions that left the log (archive --drop, retention) end, whichever is later (a subject
#: whose changes left is not new; a detector needing history before that stays silent).
_HISTORY_SINCE = """
SELECT x.relid::bigint AS relid,
       greatest(x.history_since, (SELECT max(r.upper) FROM audit.retired_partition AS r
                                   WHERE x.relid = ANY (r.tables))) AS history_since
  FROM audit.tracked_table AS x
"""


_PEAKS = """
SELECT actor, db_user, max(w)::bigint AS peak
  FROM (SELECT actor, db_user,
               sum(c) OVER (PARTITION BY actor, db_user ORDER BY minute
                            RANGE BETWEEN %s::interval PRECEDING AND CURRENT ROW) AS w
          FROM (SELECT x.actor, x.db_user, pg_catalog.date_trunc('minute', x.committed_at) AS minute,
                       sum(tt.n) AS c
                  FROM pg_temp.pgaudit_watch_tt AS tt JOIN pg_temp.pgaudit_watch_tx AS x ON x.txid = tt.txid
                 GROUP BY 1, 2, 3) AS m) AS s
 GROUP BY 1, 2
"""

_LARGEST = """
SELECT actor, db_user, max(total)::bigint AS largest
  FROM (SELECT x.actor, x.db_user, sum(tt.n) AS total
          FROM pg_temp.pgaudit_watch_tt AS tt JOIN pg_temp.pgaudit_watch_tx AS x ON x.txid = tt.txid GROUP BY x.txid, 1, 2) AS s
 GROUP BY 1, 2
"""


def largest_by_subject(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {subject_of(r["actor"], r["db_user"]): int(r["largest"]) for r in fetch(conn, _LARGEST)}
