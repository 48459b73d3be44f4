"""Watching the log: one-shot scans (anomalies), the watcher and its alerts, and tail.

The watcher's cursor is a snapshot (see ``sql/functions/08_watch.sql``): each pass reads, in one
REPEATABLE READ transaction, the transactions committed since the cursor's snapshot, stores its
alerts and moves the cursor to the pass's own snapshot, all in that transaction. A watcher killed
at any instant has either done a pass completely or not at all: no committed change is skipped,
no alert is stored twice. Responses (exec, webhook, notify) run after the commit and are marked
done; a restarted watcher runs those left pending (at least once).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import IsolationLevel, sql
from psycopg.types.json import Jsonb

from pgaudit_tool import batch, detect
from pgaudit_tool.actions import parse_action, run_actions
from pgaudit_tool.batch import Baseline
from pgaudit_tool.db import TableRef, changing_transaction, translated_errors
from pgaudit_tool.detect import Finding
from pgaudit_tool.errors import InvalidInput, WatcherBusy
from pgaudit_tool.integrity import doctor, verify_report
from pgaudit_tool.rules import Rule, Rules, parse_duration

#: Columns of the table output of anomalies, watch and alerts.
ALERT_COLUMNS = ("id", "severity", "rule", "at", "table", "actor", "db_user", "changes", "summary")
#: Columns of an alert as stored (alerts --format json/jsonl).
_STORED = """
SELECT a.id, a.rule, a.detector, a.severity, a.at, a.table_name AS "table", a.actor, a.db_user,
       a.role, pg_catalog.host(a.client_addr) AS client_addr, a.application_name,
       ARRAY(SELECT x::text::bigint FROM pg_catalog.unnest(a.txids) AS x) AS txids, a.changes,
       a.summary, a.revert, a.detail, a.raised_at, a.acked_at, a.acked_by, a.actions,
       a.actions_done_at, a.action_errors
  FROM audit.alert AS a
"""
# Session-level advisory lock held by the running watcher: (hash of "pgaudit_tool", "watch").
_LOCK = (0x70676175, 0x77617463)
# The watcher's session: built-in names only; no JIT (compiling the detectors' queries took
# longer than running them: 1.6 s for a batch of 9,000 transactions).
_SESSION = (
    "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', {local}),"
    " pg_catalog.set_config('jit', 'off', {local})"
)

Emit = Callable[[Finding], None]
Info = Callable[[str], None]


# --------------------------------------------------------------------------- anomalies


def anomalies(
    conn: psycopg.Connection[Any], rules: Rules, since: datetime, until: datetime
) -> list[Finding]:
    """What the detectors find in the transactions committed in [since, until); changes nothing.
    The baseline is the window before ``since``."""
    if until <= since:
        raise InvalidInput("--until must be after --since")
    window = "audit.transaction AS t WHERE t.committed_at >= %s AND t.committed_at < %s"
    with translated_errors(), conn.transaction(force_rollback=True):
        conn.execute(_SESSION.format(local="true"))
        batch.prepare(conn)
        base = batch.load_baseline(conn, rules, window, [since - rules.baseline, since], since)
        batch.load_batch(conn, window, [since, until])
        found = detect.judge(conn, rules, base)
        breaks = batch.fetch(
            conn,
            "SELECT * FROM audit.history_break WHERE txid IN (SELECT txid FROM audit.transaction"
            " WHERE committed_at >= %s AND committed_at < %s) OR (at >= %s AND at < %s)",
            [since, until, since, until],
        )
        found += integrity_findings(conn, rules, breaks, chain=True)
    return sorted(found, key=lambda f: (f.at or since, f.rule))


# --------------------------------------------------------------------------- integrity


def integrity_findings(
    conn: psycopg.Connection[Any], rules: Rules, breaks: Sequence[dict[str, Any]], *, chain: bool
) -> list[Finding]:
    """doctor's errors, new history breaks and (``chain``) a hash chain that does not verify."""
    out: list[Finding] = []
    now = datetime.now(UTC)
    for rule in rules.of("integrity"):
        for p in (p for p in doctor(conn) if p["severity"] == "error"):
            out.append(
                _integrity(
                    rule,
                    f"auditing is not intact: {p['object']}: {p['problem']}",
                    f"doctor:{p['object']}:{p['problem']}",
                    now,
                    table=p["object"],
                    detail={"fix": p["fix"]},
                )
            )
        for b in breaks:
            table = _name_of(conn, b["relid"])
            out.append(
                _integrity(
                    rule,
                    f"login role {b['db_user']} broke the history of {table} at"
                    f" {detect._utc(b['at'])}: {b['reason']}",
                    f"break:{b['id']}",
                    b["at"],
                    table=table,
                    relid=b["relid"],
                    db_user=b["db_user"],
                    txids=[int(str(b["txid"]))],
                    detail={"break_id": b["id"]},
                )
            )
        if chain:
            out += _chain_findings(conn, rule, now)
    return out


def _chain_findings(conn: psycopg.Connection[Any], rule: Rule, now: datetime) -> list[Finding]:
    problems = verify_report(conn).problems
    if not problems:
        return []
    text = "; ".join(str(p["problem"]) for p in problems[:3])
    digest = hashlib.sha256(repr([p["problem"] for p in problems]).encode()).hexdigest()[:16]
    return [
        _integrity(
            rule,
            f"the hash chain does not verify: {len(problems)} problem(s): {text}",
            f"chain:{digest}",
            now,
            detail={"problems": problems[:20]},
        )
    ]


def _integrity(rule: Rule, summary: str, fingerprint: str, at: datetime, **facts: Any) -> Finding:
    return Finding(
        rule=rule.name,
        detector="integrity",
        severity=rule.severity,
        summary=summary,
        fingerprint=fingerprint,
        at=at,
        actions=rule.actions,
        revert=None,
        **facts,
    )


def _name_of(conn: psycopg.Connection[Any], relid: int) -> str:
    row = conn.execute(
        "SELECT coalesce((SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname)"
        " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = %s::oid), (SELECT pg_catalog.format('%%I.%%I', schema_name, table_name)"
        " FROM audit.tracked_table WHERE relid = %s::oid), %s::text)",
        [relid, relid, str(relid)],
    ).fetchone()
    return str(row[0]) if row else str(relid)


# --------------------------------------------------------------------------- storing alerts


_INSERT = """
INSERT INTO audit.alert (rule, detector, severity, at, table_name, relid, actor, db_user, role,
                         client_addr, application_name, txids, changes, summary, revert, detail,
                         fingerprint, actions, actions_done_at)
SELECT %s, %s, %s, %s, %s, %s::oid, %s, %s, %s, %s::inet, %s, %s::text[]::xid8[], %s, %s, %s, %s,
       %s, %s::text[], CASE WHEN %s THEN pg_catalog.clock_timestamp() END
 WHERE NOT EXISTS (SELECT FROM audit.alert AS o
                    WHERE o.rule = %s AND o.fingerprint = %s
                      AND (o.acked_at IS NULL OR o.raised_at > pg_catalog.clock_timestamp() - %s::interval))
ON CONFLICT (rule, fingerprint) WHERE acked_at IS NULL DO NOTHING
RETURNING id
"""


def store(
    conn: psycopg.Connection[Any], rules: Rules, findings: Sequence[Finding]
) -> list[Finding]:
    """Insert the findings as alerts (in the caller's transaction); returns those stored, with
    their ids. A finding whose rule and fingerprint match an open alert (or, for integrity, one
    raised within repeat_after) is not stored again."""
    repeat = {
        r.name: f"{parse_duration(r.get('repeat_after'))} seconds" for r in rules.of("integrity")
    }
    stored = []
    for f in findings:
        responses = [str(a) for a in f.actions if a.kind != "alert"]
        row = conn.execute(
            _INSERT,
            [
                f.rule,
                f.detector,
                f.severity,
                f.at,
                f.table,
                f.relid,
                f.actor,
                f.db_user,
                f.role,
                f.client_addr,
                f.application_name,
                [str(t) for t in f.txids],
                f.changes,
                f.summary,
                f.revert,
                Jsonb(f.detail),
                f.fingerprint,
                [str(a) for a in f.actions],
                not responses,
                f.rule,
                f.fingerprint,
                repeat.get(f.rule, "0 seconds"),
            ],
        ).fetchone()
        if row is not None:
            f.id = int(row[0])
            stored.append(f)
    return stored


def respond(conn: psycopg.Connection[Any], finding: Finding) -> list[str]:
    """Run the finding's responses and mark its alert done (notify is sent on that commit)."""
    actions = [a for a in finding.actions if a.kind != "alert"]
    with conn.transaction():
        failures = run_actions(actions, finding.record(), conn) if actions else []
        conn.execute(
            "UPDATE audit.alert SET actions_done_at = pg_catalog.clock_timestamp(),"
            " action_errors = %s WHERE id = %s",
            [failures or None, finding.id],
        )
    return failures


# --------------------------------------------------------------------------- the watcher


class Watcher:
    """Evaluates newly committed changes, pass after pass, on its own connection."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        rules: Rules,
        *,
        name: str = "default",
        emit: Emit = lambda _f: None,
        info: Info = lambda _m: None,
        stop: threading.Event | None = None,
        exclusive: bool = True,
    ) -> None:
        self.conn = conn
        self.exclusive = exclusive
        self.rules = rules
        self.name = name
        self.emit = emit
        self.info = info
        self.stop = stop or threading.Event()
        self.base: Baseline | None = None
        self.evaluated = 0
        self._next_doctor: datetime | None = None

    # Setup -----------------------------------------------------------------------------
    def start(self) -> None:
        """Take the watcher lock, create the cursor on first use, load the baseline."""
        conn = self.conn
        with translated_errors():
            conn.autocommit = True
            if self.exclusive and not self._lock():
                raise WatcherBusy(
                    f"another watcher is running on database {conn.info.dbname}: {self._holder()}",
                    hint="One watcher per database. Stop it first, or use anomalies for a one-shot scan.",
                )
            conn.execute(_SESSION.format(local="false"))
            batch.prepare(conn)
            conn.isolation_level = IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                snapshot = self._cursor(create=True)
                window = (
                    "audit.transaction AS t WHERE t.committed_at >= %s"
                    " AND pg_catalog.pg_visible_in_snapshot(t.txid, %s::pg_snapshot)"
                )
                now = _now(conn)
                self.base = batch.load_baseline(
                    conn, self.rules, window, [now - self.rules.baseline, snapshot], now
                )
                self._load_recent_bursts()
        self._resume_responses()

    def _lock(self) -> bool:
        """The one-watcher-per-database lock (a session advisory lock: a watcher killed with
        kill -9 loses it with its connection)."""
        row = self.conn.execute("SELECT pg_catalog.pg_try_advisory_lock(%s, %s)", _LOCK).fetchone()
        return bool(row and row[0])

    def _holder(self) -> str:
        row = self.conn.execute(
            "SELECT a.pid, a.usename, a.client_addr, a.application_name FROM pg_catalog.pg_locks l"
            " JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
            " AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid AND l.granted"
            " AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())",
            _LOCK,
        ).fetchone()
        if row is None:
            return "its session could not be identified"
        return f"pid {row[0]}, login {row[1]}, application {row[3]!r}"

    def _cursor(self, *, create: bool = False) -> str:
        row = self.conn.execute(
            "SELECT snapshot::text FROM audit.watch_cursor WHERE name = %s FOR UPDATE", [self.name]
        ).fetchone()
        if row is not None:
            return str(row[0])
        if not create:
            raise InvalidInput(f"the watcher cursor {self.name!r} disappeared")
        row = self.conn.execute(
            "INSERT INTO audit.watch_cursor (name, snapshot, watcher, chain_checked_at) VALUES"
            " (%s, pg_catalog.pg_current_snapshot(), %s, pg_catalog.clock_timestamp())"
            " RETURNING snapshot::text",
            [self.name, _me()],
        ).fetchone()
        assert row is not None
        self.info(
            "watch: first start on this database; changes committed before now are not"
            " evaluated (scan them with: pgaudit-tool anomalies --since TIME)"
        )
        return str(row[0])

    def _load_recent_bursts(self) -> None:
        """Bursts alerted lately: a burst still going on is not raised again after a restart."""
        assert self.base is not None
        for r in batch.fetch(
            self.conn,
            "SELECT rule, detail FROM audit.alert WHERE detector = 'burst'"
            " AND raised_at > pg_catalog.now() - interval '1 day'",
        ):
            detail = r["detail"] or {}
            if "subject" in detail and "window_end" in detail:
                key = (r["rule"], detail["subject"])
                end = datetime.fromisoformat(detail["window_end"])
                self.base.bursts[key] = max(self.base.bursts.get(key, end), end)

    def _resume_responses(self) -> None:
        """Responses of alerts stored before a crash, not yet run."""
        with translated_errors():
            rows = batch.fetch(
                self.conn,
                "SELECT id, rule, detector, severity, at, table_name AS table,"
                " actor, db_user, role, pg_catalog.host(client_addr) AS client_addr, application_name,"
                " ARRAY(SELECT x::text::bigint FROM pg_catalog.unnest(txids) x) AS txids, changes,"
                " summary, revert, detail, fingerprint, actions FROM audit.alert"
                " WHERE actions_done_at IS NULL ORDER BY id",
            )
        for r in rows:
            actions = tuple(parse_action(a) for a in r.pop("actions"))
            f = Finding(
                **{k: v for k, v in r.items() if k != "table"}, table=r["table"], actions=actions
            )
            self._respond(f)

    # Passes ----------------------------------------------------------------------------
    def run(self, *, once: bool = False, interval: float = 1.0) -> int:
        """Passes until stopped (or one, ``once``); returns the number of alerts stored."""
        if self.base is None:
            self.start()
        raised = 0
        while True:
            raised += self.pass_once()
            raised += self.check_integrity(force=once)
            if once or self.stop.wait(interval):
                return raised

    def pass_once(self) -> int:
        """Evaluate what committed since the cursor; store alerts and move the cursor atomically."""
        assert self.base is not None
        conn = self.conn
        with translated_errors(), conn.transaction():
            row = conn.execute("SELECT pg_catalog.pg_current_snapshot()::text").fetchone()
            assert row is not None
            snapshot = str(row[0])
            cursor = self._cursor()
            pending = conn.execute(
                "SELECT EXISTS (SELECT FROM audit.watch_pending(%s::pg_snapshot))"
                " OR EXISTS (SELECT FROM audit.watch_pending_breaks(%s::pg_snapshot))",
                [cursor, cursor],
            ).fetchone()
            if not pending or not pending[0]:
                return 0
            changes = batch.load_batch(conn, "audit.watch_pending(%s::pg_snapshot) AS t", [cursor])
            found = detect.judge(conn, self.rules, self.base)
            breaks = batch.fetch(
                conn, "SELECT * FROM audit.watch_pending_breaks(%s::pg_snapshot)", [cursor]
            )
            if breaks:
                found += integrity_findings(conn, self.rules, breaks, chain=False)
            stored = store(conn, self.rules, found)
            conn.execute(
                "UPDATE audit.watch_cursor SET snapshot = %s::pg_snapshot,"
                " moved_at = pg_catalog.clock_timestamp(), moved_by = session_user,"
                " watcher = %s, evaluated = evaluated + %s WHERE name = %s",
                [snapshot, _me(), changes, self.name],
            )
        self.evaluated += changes
        self.base.forget_before(datetime.now(UTC) - self.rules.baseline)
        for f in stored:
            self.emit(f)
            self._respond(f)
        return len(stored)

    def check_integrity(self, *, force: bool = False) -> int:
        """doctor every minute (and on every --once), the hash chain when verify_interval has
        passed since the last check, as recorded in the cursor (integrity detector)."""
        rules = self.rules.of("integrity")
        if not rules:
            return 0
        now = datetime.now(UTC)
        if not force and self._next_doctor is not None and now < self._next_doctor:
            return 0
        every = min(r.seconds("verify_interval") for r in rules)
        with translated_errors(), self.conn.transaction():
            row = self.conn.execute(
                "SELECT chain_checked_at IS NULL OR chain_checked_at"
                " <= pg_catalog.clock_timestamp() - %s * interval '1 second'"
                " FROM audit.watch_cursor WHERE name = %s FOR UPDATE",
                [every, self.name],
            ).fetchone()
            chain = bool(row and row[0])
            found = integrity_findings(self.conn, self.rules, [], chain=chain)
            stored = store(self.conn, self.rules, found)
            if chain:
                self.conn.execute(
                    "UPDATE audit.watch_cursor SET chain_checked_at = pg_catalog.clock_timestamp()"
                    " WHERE name = %s",
                    [self.name],
                )
        self._next_doctor = now + timedelta(minutes=1)
        for f in stored:
            self.emit(f)
            self._respond(f)
        return len(stored)

    def _respond(self, f: Finding) -> None:
        failures = respond(self.conn, f)
        for failure in failures:
            self.info(f"watch: alert {f.id}: {failure}")


def _now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT pg_catalog.clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def reset_cursor(conn: psycopg.Connection[Any], name: str = "default") -> None:
    """Forget the watcher's position: its next start evaluates from then on."""
    with translated_errors(), conn.transaction():
        conn.execute("DELETE FROM audit.watch_cursor WHERE name = %s", [name])


# --------------------------------------------------------------------------- alerts


def alerts(
    conn: psycopg.Connection[Any],
    *,
    since: datetime | None = None,
    severity: str | None = None,
    rule: str | None = None,
    open_only: bool = False,
) -> list[dict[str, Any]]:
    """Stored alerts, oldest first. ``severity``: that level and above."""
    levels = ("info", "warning", "critical")
    if severity is not None and severity not in levels:
        raise InvalidInput(f"unknown severity {severity!r}", hint="Use info, warning or critical.")
    where: list[Any] = ["true"]
    params: list[Any] = []
    if since is not None:
        where.append("a.raised_at >= %s")
        params.append(since)
    if severity is not None:
        where.append("a.severity = ANY (%s)")
        params.append(list(levels[levels.index(severity) :]))
    if rule is not None:
        where.append("a.rule = %s")
        params.append(rule)
    if open_only:
        where.append("a.acked_at IS NULL")
    with translated_errors():
        query = sql.SQL(_STORED) + sql.SQL(" WHERE ") + sql.SQL(" AND ").join(map(sql.SQL, where))
        return batch.fetch(conn, query + sql.SQL(" ORDER BY a.id"), params)


def ack(conn: psycopg.Connection[Any], ids: Sequence[int], by: str | None = None) -> list[int]:
    """Acknowledge alerts; returns the ids acknowledged now. Unknown ids are an error."""
    if not ids:
        raise InvalidInput("name the alerts to acknowledge", hint="pgaudit-tool alerts --ack 12 13")
    with translated_errors(), changing_transaction(conn):
        known = {
            r[0]
            for r in conn.execute("SELECT id FROM audit.alert WHERE id = ANY (%s)", [list(ids)])
        }
        missing = sorted(set(ids) - known)
        if missing:
            raise InvalidInput(
                f"no alert with id {', '.join(map(str, missing))}; nothing was acknowledged"
            )
        rows = conn.execute(
            "SELECT * FROM audit.ack_alerts(%s::bigint[], coalesce(%s, session_user))",
            [list(ids), by],
        ).fetchall()
    return sorted(int(r[0]) for r in rows)


# --------------------------------------------------------------------------- tail

_TAIL = """
SELECT c.id, pg_catalog.quote_ident(c.schema_name) || '.' || pg_catalog.quote_ident(c.table_name) AS "table",
       CASE c.op WHEN 'I' THEN 'INSERT' WHEN 'U' THEN 'UPDATE' WHEN 'D' THEN 'DELETE' ELSE 'TRUNCATE' END AS op,
       c.pk, c.old, c.new,
       CASE WHEN c.op = 'U' THEN audit.changed_columns(c.old, c.new) END AS changed,
       c.txid::text::bigint AS txid, t.committed_at, c.clock_at AS at, t.db_user, c.role, t.actor,
       pg_catalog.host(t.client_addr) AS client_addr, t.application_name
  FROM {source}
 WHERE {where}
"""
TAIL_COLUMNS = ("committed_at", "table", "op", "pk", "changed", "actor", "db_user", "txid", "id")


def tail(
    conn: psycopg.Connection[Any],
    *,
    table: TableRef | None = None,
    actor: str | None = None,
    db_user: str | None = None,
    last: int = 10,
    follow: bool = False,
    interval: float = 1.0,
    stop: threading.Event | None = None,
) -> Iterator[dict[str, Any]]:
    """The last ``last`` committed changes, newest last; with ``follow``, then every change as
    it commits (in commit order), until ``stop`` is set."""
    if last < 0:
        raise InvalidInput("-n must be zero or more")
    conds: list[sql.Composable] = [sql.SQL("true")]
    params: list[Any] = []
    for alias, column, value in (
        ("c", "relid", None if table is None else table.oid),
        ("t", "actor", actor),
        ("t", "db_user", db_user),
    ):
        if value is not None:
            conds.append(
                sql.SQL("{}.{} = %s").format(sql.Identifier(alias), sql.Identifier(column))
            )
            params.append(value)
    where = sql.SQL(" AND ").join(conds)
    stop = stop or threading.Event()
    recent = sql.SQL(_TAIL).format(
        source=sql.SQL(
            "(SELECT c.* FROM audit.change AS c"
            " JOIN audit.transaction AS t ON t.txid = c.txid AND t.started_at = c.started_at"
            " WHERE {} ORDER BY c.id DESC LIMIT %s) AS c"
            " JOIN audit.transaction AS t ON t.txid = c.txid AND t.started_at = c.started_at"
        ).format(where),
        where=sql.SQL("true"),
    ) + sql.SQL(" ORDER BY t.committed_at, c.id")
    pending = sql.SQL(_TAIL).format(
        source=sql.SQL(
            "audit.watch_pending(%s::pg_snapshot) AS t"
            " JOIN audit.change AS c ON c.txid = t.txid AND c.started_at = t.started_at"
        ),
        where=where,
    ) + sql.SQL(" ORDER BY t.committed_at, c.id")
    old_level = conn.isolation_level
    conn.isolation_level = IsolationLevel.REPEATABLE_READ
    try:
        with translated_errors(), conn.transaction():
            row = conn.execute("SELECT pg_catalog.pg_current_snapshot()::text").fetchone()
            assert row is not None
            snapshot = str(row[0])
            rows = batch.fetch(conn, recent, [*params, last])
        yield from rows
        while follow and not stop.wait(interval):
            with translated_errors(), conn.transaction():
                row = conn.execute("SELECT pg_catalog.pg_current_snapshot()::text").fetchone()
                assert row is not None
                rows = batch.fetch(conn, pending, [snapshot, *params])
                snapshot = str(row[0])
            yield from rows
    finally:
        conn.isolation_level = old_level


# --------------------------------------------------------------------------- rules vs database


def resolve_rules(conn: psycopg.Connection[Any], rules: Rules) -> Rules:
    """The rules with each table name that is not a pattern resolved to its quoted, qualified
    name; a table that does not exist, or is not audited, is an error naming the line."""
    from dataclasses import replace

    from pgaudit_tool.db import resolve_table
    from pgaudit_tool.rules import rule_error

    resolved = []
    for rule in rules.rules:
        names = []
        for name in rule.tables:
            if any(ch in name for ch in "*?["):
                names.append(name)
                continue
            try:
                ref = resolve_table(conn, name)
            except InvalidInput as exc:
                key = "table" if rule.section and rule.section[0] == "rule" else "tables"
                raise rule_error(rules, rule.section, key, exc.message) from None
            audited = conn.execute(
                "SELECT EXISTS (SELECT FROM audit.tracked_table WHERE relid = %s::oid)", [ref.oid]
            ).fetchone()
            if not audited or not audited[0]:
                raise rule_error(rules, rule.section, "table", f"table {ref.name} is not audited")
            names.append(ref.name)
        resolved.append(replace(rule, tables=tuple(names)))
    return replace(rules, rules=tuple(resolved))
