"""Concurrent writers lose nothing, and rolled-back work leaves nothing.

Eight threads, each with its own connection, run random transactions on two audited tables
over a small shared key space (so they block each other, deadlock, and fail to serialize).
Each transaction sets its actor with :func:`pgaudit_tool.audit_context`; some are rolled back
on purpose, some fail (deadlock, serialization failure, duplicate key) and are rolled back by
the server; inside committed ones, some statements run in a savepoint that is rolled back.

Client side, every transaction records its txid and, statement by statement, exactly the
changes it made: (table, op, pk, old, new), known from RETURNING and from rows locked
FOR UPDATE before they are changed. Then:

* the txids in audit.change are exactly those of the committed transactions that changed rows;
* per committed txid, the audit rows in id order are the recorded changes, statement by
  statement (order within one statement is free);
* each of those txids has exactly one audit.transaction row, with its thread as actor and its
  context;
* every one of them has a commit time (audit.transaction.committed_at);
* replaying the log rebuilds both tables exactly, applying the changes in id order and also in
  commit order (committed_at, then id), the order point-in-time reconstruction relies on.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import IsolationLevel, sql
from psycopg.rows import dict_row

from pgaudit_tool import Audit, audit_context

THREADS = 8
TRANSACTIONS = 40  # per thread
ATTEMPTS = 3  # per transaction: failed ones (deadlock, serialization, ...) are retried
KEYS = 24  # acc ids 1..KEYS; tag keys (kind, n) in {a, b} x 1..KEYS // 2

SCHEMA = """
CREATE TABLE acc (id int PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL, note text);
CREATE TABLE tag (kind text, n int, label text, hits int NOT NULL DEFAULT 0,
                  PRIMARY KEY (kind, n));
"""
TABLES = ("acc", "tag")
KEY_COLUMNS = {"acc": ("id",), "tag": ("kind", "n")}

# (table, op, pk, old, new), the JSON values canonical (sorted keys) so that they compare.
Change = tuple[str, str, str, str | None, str | None]

RETRY_ERRORS = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.UniqueViolation,
    psycopg.errors.LockNotAvailable,
)


def canon(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


@dataclass
class Txn:
    thread: str
    number: int
    txid: str = ""
    statements: list[list[Change]] = field(default_factory=list)
    committed: bool = False
    error: str = ""


class Writer:
    """One thread's random transactions; fills ``self.done`` with a :class:`Txn` per attempt."""

    def __init__(self, dsn: str, index: int, seed: int) -> None:
        self.dsn = dsn
        self.name = f"writer-{index}"
        self.rng = random.Random(seed * 100 + index)
        self.done: list[Txn] = []
        self.crash: BaseException | None = None

    # -- statements: each returns the changes it made
    def _key(self, table: str) -> tuple[Any, ...]:
        if table == "acc":
            return (self.rng.randint(1, KEYS),)
        return (self.rng.choice("ab"), self.rng.randint(1, KEYS // 2))

    def _keys(self, table: str, n: int) -> list[tuple[Any, ...]]:
        return list(dict.fromkeys(self._key(table) for _ in range(n)))

    @staticmethod
    def _where(table: str, keys: list[tuple[Any, ...]]) -> sql.Composable:
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in KEY_COLUMNS[table])
        return sql.SQL("({}) IN ({})").format(
            cols,
            sql.SQL(", ").join(
                sql.SQL("({})").format(sql.SQL(", ").join(sql.Literal(v) for v in k)) for k in keys
            ),
        )

    @staticmethod
    def _pk(table: str) -> sql.Composable:
        return sql.SQL("jsonb_build_object({})").format(
            sql.SQL(", ").join(
                sql.SQL("{}, {}").format(sql.Literal(c), sql.Identifier(c))
                for c in KEY_COLUMNS[table]
            )
        )

    def insert(self, conn: psycopg.Connection[Any], table: str) -> list[Change]:
        keys = self._keys(table, self.rng.randint(1, 3))
        if table == "acc":
            values = [(k[0], self.name, self.rng.randint(0, 100), None) for k in keys]
        else:
            values = [(k[0], k[1], f"{self.name} «{k}»", 0) for k in keys]
        query = sql.SQL("INSERT INTO {} VALUES {} {} RETURNING {}, to_jsonb({})").format(
            sql.Identifier(table),
            sql.SQL(", ").join(
                sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Literal, v))) for v in values
            ),
            sql.SQL("ON CONFLICT DO NOTHING" if self.rng.random() < 0.5 else ""),
            self._pk(table),
            sql.Identifier(table),
        )
        return [(table, "I", canon(pk), None, canon(new)) for pk, new in conn.execute(query)]

    def _lock(
        self, conn: psycopg.Connection[Any], table: str, keys: list[tuple[Any, ...]]
    ) -> dict[str, tuple[tuple[Any, ...], Any]]:
        """Lock the existing rows among ``keys`` (in key order).

        Returns {canonical pk: (key, image)}. Later statements must touch only these rows: in
        READ COMMITTED, rows committed by others after this lock are visible to them.
        """
        query = sql.SQL(
            "SELECT {}, to_jsonb(t) FROM {} AS t WHERE {} ORDER BY 1 FOR UPDATE"
        ).format(self._pk(table), sql.Identifier(table), self._where(table, keys))
        return {
            canon(pk): (tuple(pk[c] for c in KEY_COLUMNS[table]), old)  # type: ignore[misc]
            for pk, old in conn.execute(query)
        }

    def update(self, conn: psycopg.Connection[Any], table: str) -> list[Change]:
        keys = self._keys(table, self.rng.randint(1, 3))
        olds = self._lock(conn, table, keys)
        if not olds:
            return []
        if table == "acc":
            sets = sql.SQL("balance = balance + {}, owner = {}, note = {}").format(
                self.rng.randint(-50, 50),
                self.name,
                self.rng.choice([None, "x", "ünï 😀", "it's"]),
            )
        else:
            sets = sql.SQL("hits = hits + 1, label = {}").format(f"{self.name}/{self.rng.random()}")
        query = sql.SQL("UPDATE {} AS t SET {} WHERE {} RETURNING {}, to_jsonb(t)").format(
            sql.Identifier(table),
            sets,
            self._where(table, [key for key, _ in olds.values()]),
            self._pk(table),
        )
        changes = []
        for pk, new in conn.execute(query):
            assert canon(pk) in olds, "updated a row that was not locked"
            changes.append((table, "U", canon(pk), canon(olds[canon(pk)][1]), canon(new)))
        assert len(changes) == len(olds)
        return changes

    def rekey(self, conn: psycopg.Connection[Any], table: str) -> list[Change]:
        """Change the key of one row: logged as old key -> NULL and NULL -> new key."""
        (key,) = self._keys(table, 1)
        new_key = self._key(table)
        olds = self._lock(conn, table, [key])
        if not olds or new_key == key:
            return []
        sets = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), sql.Literal(v))
            for c, v in zip(KEY_COLUMNS[table], new_key, strict=True)
        )
        query = sql.SQL("UPDATE {} AS t SET {} WHERE {} RETURNING {}, to_jsonb(t)").format(
            sql.Identifier(table), sets, self._where(table, [key]), self._pk(table)
        )
        ((new_pk, new),) = conn.execute(query).fetchall()
        ((old_pk, (_, old)),) = olds.items()
        return [
            (table, "U", old_pk, canon(old), None),
            (table, "U", canon(new_pk), None, canon(new)),
        ]

    def delete(self, conn: psycopg.Connection[Any], table: str) -> list[Change]:
        keys = self._keys(table, self.rng.randint(1, 2))
        query = sql.SQL("DELETE FROM {} AS t WHERE {} RETURNING {}, to_jsonb(t)").format(
            sql.Identifier(table), self._where(table, keys), self._pk(table)
        )
        return [(table, "D", canon(pk), canon(old), None) for pk, old in conn.execute(query)]

    def statement(self, conn: psycopg.Connection[Any], txn: Txn) -> None:
        op = self.rng.choice(
            [self.insert, self.insert, self.update, self.update, self.rekey, self.delete]
        )
        table = self.rng.choice(TABLES)
        if op in (self.insert, self.rekey) or self.rng.random() < 0.15:
            # In a savepoint: a duplicate key only undoes this statement; and sometimes the
            # savepoint is rolled back on purpose. Either way the statement left nothing.
            try:
                with conn.transaction() as sp:
                    changes = op(conn, table)
                    if self.rng.random() < 0.15:
                        raise psycopg.Rollback(sp)
                    txn.statements.append(changes)
            except psycopg.errors.UniqueViolation:
                pass
        else:
            txn.statements.append(op(conn, table))

    # -- transactions
    def attempt(self, conn: psycopg.Connection[Any], number: int) -> bool:
        conn.isolation_level = self.rng.choice(
            [IsolationLevel.READ_COMMITTED] * 3
            + [IsolationLevel.REPEATABLE_READ, IsolationLevel.SERIALIZABLE]
        )
        txn = Txn(self.name, number)
        self.done.append(txn)
        rollback = self.rng.random() < 0.2
        try:
            with audit_context(conn, self.name, {"thread": self.name, "txn": number}):
                row = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
                assert row is not None
                txn.txid = row[0]
                for _ in range(self.rng.randint(1, 4)):
                    self.statement(conn, txn)
                    if self.rng.random() < 0.3:
                        time.sleep(self.rng.random() / 500)  # hold the locks a little
                if rollback:
                    raise psycopg.Rollback()
        except RETRY_ERRORS as exc:
            txn.error = type(exc).__name__
            return False
        txn.committed = not rollback
        return True

    def run(self) -> None:
        try:
            with psycopg.connect(
                self.dsn,
                autocommit=False,
                options="-c deadlock_timeout=20ms -c lock_timeout=10s -c statement_timeout=20s",
            ) as conn:
                for number in range(TRANSACTIONS):
                    for _ in range(ATTEMPTS):
                        if self.attempt(conn, number):
                            break
        except BaseException as exc:  # reported by the test
            self.crash = exc


def _replay_differences(
    conn: psycopg.Connection[Any], table: str, *, by_commit: bool = False
) -> list[str]:
    """Rows of the live table and of its replay that the other lacks (EXCEPT ALL both ways).

    The changes are applied in id order, or with ``by_commit`` in the order of their
    transactions' commit times (audit.transaction.committed_at), then id: the order that
    point-in-time reconstruction relies on.
    """
    t = sql.Identifier(table)
    order = sql.SQL("t.committed_at DESC, c.id DESC" if by_commit else "c.id DESC")
    replayed = sql.SQL(
        """SELECT r.* FROM (SELECT DISTINCT ON (c.pk) c.pk, c.new
                              FROM audit.change AS c JOIN audit.transaction AS t USING (txid)
                             WHERE c.relid = {rel}::regclass ORDER BY c.pk, {order}) AS last
           CROSS JOIN LATERAL jsonb_populate_record(NULL::{t}, last.new) AS r
           WHERE last.new IS NOT NULL"""
    ).format(rel=sql.Literal(table), t=t, order=order)
    diff = sql.SQL(
        "(SELECT 'live only', x::text FROM (TABLE {t} EXCEPT ALL {r}) AS x)"
        " UNION ALL (SELECT 'replay only', x::text FROM ({r} EXCEPT ALL TABLE {t}) AS x)"
    ).format(t=t, r=replayed)
    return [f"{side}: {row}" for side, row in conn.execute(diff)]


def test_concurrent_writers_lose_nothing(
    audit: Audit, conn: psycopg.Connection[Any], dsn: str
) -> None:
    conn.execute(SCHEMA)
    audit.enable(*TABLES)
    seed = random.randrange(10**6)
    writers = [Writer(dsn, i, seed) for i in range(THREADS)]
    threads = [threading.Thread(target=w.run, name=w.name) for w in writers]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "writers hung"
    crashes = {w.name: repr(w.crash) for w in writers if w.crash}
    assert not crashes, f"seed {seed}: {crashes}"
    elapsed = time.monotonic() - started

    txns = [txn for w in writers for txn in w.done]
    committed = {t.txid: t for t in txns if t.committed}
    rolled_back = {t.txid for t in txns if not t.committed and t.txid}
    changing = {txid for txid, t in committed.items() if any(t.statements)}
    assert len(committed) >= THREADS * TRANSACTIONS // 2, "too few transactions committed"
    assert rolled_back, "no transaction was rolled back"
    assert not rolled_back & set(committed)

    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT id, txid::text AS txid, table_name, op, pk, old, new"
            " FROM audit.change ORDER BY id"
        ).fetchall()
        transactions = {
            r["txid"]: r
            for r in cur.execute(
                "SELECT txid::text AS txid, actor, context, committed_at FROM audit.transaction"
            ).fetchall()
        }
    by_txid: dict[str, list[Change]] = {}
    for r in rows:
        by_txid.setdefault(r["txid"], []).append(
            (r["table_name"], r["op"], canon(r["pk"]), canon(r["old"]), canon(r["new"]))
        )

    # Exactly the committed transactions that changed rows are in the log.
    assert set(by_txid) & rolled_back == set(), "rolled-back transactions in the log"
    assert set(by_txid) == changing, (
        f"seed {seed}: txids logged but not committed: {sorted(set(by_txid) - changing)[:5]}; "
        f"committed but not logged: {sorted(changing - set(by_txid))[:5]}"
    )
    # Per transaction: its changes, statement after statement.
    for txid in changing:
        logged = by_txid[txid]
        position = 0
        for statement in committed[txid].statements:
            chunk = logged[position : position + len(statement)]
            assert sorted(chunk, key=repr) == sorted(statement, key=repr), (
                f"seed {seed}, txid {txid}: logged {chunk}, made {statement}"
            )
            position += len(statement)
        assert position == len(logged), f"seed {seed}, txid {txid}: extra rows {logged[position:]}"
    # One audit.transaction row per changing transaction, with its actor and context.
    assert set(transactions) == changing
    for txid in changing:
        txn = committed[txid]
        row = transactions[txid]
        assert (row["actor"], row["context"]) == (
            txn.thread,
            {"thread": txn.thread, "txn": txn.number},
        )
        assert row["committed_at"] is not None, f"txid {txid}: committed without committed_at"
    # Replay rebuilds both tables, in change order and in commit order.
    for table in TABLES:
        for by_commit in (False, True):
            differences = _replay_differences(conn, table, by_commit=by_commit)
            assert not differences, f"seed {seed}: {table} (by commit: {by_commit}): {differences}"
    print(
        f"{len(txns)} attempts in {elapsed:.1f}s: {len(committed)} committed "
        f"({len(changing)} with changes, {len(rows)} change rows), {len(rolled_back)} rolled back "
        f"({sum(1 for t in txns if t.error)} by errors)"
    )


def test_commit_time_is_the_time_of_the_commit(
    audit: Audit, conn: psycopg.Connection[Any], dsn: str
) -> None:
    """BUG: committed_at is written by a deferred constraint trigger, which SET CONSTRAINTS ALL
    IMMEDIATE (run by ORMs and tools to check deferred foreign keys early) fires at once. The
    transaction is then stamped as committed before it made its later changes and before
    transactions that really committed earlier: "the state at T" (transactions with
    committed_at <= T) includes a transaction that had not committed at T."""
    conn.execute(SCHEMA)
    audit.enable(*TABLES)
    with psycopg.connect(dsn) as slow, psycopg.connect(dsn) as fast, slow.transaction():
        slow_txid = slow.execute("SELECT pg_current_xact_id()::text").fetchone()
        slow.execute("INSERT INTO acc VALUES (1, 'slow', 0, NULL)")
        slow.execute("SET CONSTRAINTS ALL IMMEDIATE")  # e.g. Django's check_constraints()
        with fast.transaction():
            fast_txid = fast.execute("SELECT pg_current_xact_id()::text").fetchone()
            fast.execute("INSERT INTO acc VALUES (2, 'fast', 0, NULL)")
        slow.execute("UPDATE acc SET balance = 10 WHERE id = 1")
    assert slow_txid and fast_txid
    times = dict(conn.execute("SELECT txid::text, committed_at FROM audit.transaction").fetchall())
    row = conn.execute(
        "SELECT max(clock_at) FROM audit.change WHERE txid = %s::xid8", slow_txid
    ).fetchone()
    assert row is not None
    slow_at, fast_at, slow_last_change = times[slow_txid[0]], times[fast_txid[0]], row[0]
    assert slow_at >= slow_last_change and slow_at > fast_at, (
        f"committed last, stamped {slow_at}: before its own last change ({slow_last_change})"
        f" and before the transaction that committed first ({fast_at})"
    )
