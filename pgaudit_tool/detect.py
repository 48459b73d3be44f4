"""The detectors: findings in a batch of committed transactions, judged against a baseline.

A batch is a set of committed transactions, loaded into two temporary tables (one row per
transaction, one per transaction, table and operation with its row count). The detectors then
read a handful of aggregates of the batch, never the log row by row, so that evaluating a
million changes costs a few scans. The baseline (what each actor and login role usually does)
is built the same way from the baseline window, and kept up to date with every batch.

Subjects: the application user (``actor``) when the transaction set one, else the login role.
"""

from __future__ import annotations

import math
import shlex
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from pgaudit_tool.actions import Action
from pgaudit_tool.batch import (
    SENSITIVE,
    TX_TABLES,
    Baseline,
    Cell,
    cells,
    fetch,
    largest_by_subject,
    subject_of,
)
from pgaudit_tool.rules import Rule, Rules, parse_duration

_MAX_TXIDS = 20  # _CELLS keeps 21 txids: one more tells that there are more
_VERBS = {"I": "inserted", "U": "updated", "D": "deleted", "T": "truncated"}
_OP_NAMES = {"I": "INSERT", "U": "UPDATE", "D": "DELETE", "T": "TRUNCATE"}
_FINDING_KEYS = (
    "id", "rule", "detector", "severity", "at", "table", "actor", "db_user", "role",
    "client_addr", "application_name", "txids", "changes", "summary", "revert",
)  # fmt: skip


@dataclass
class Finding:
    """One finding. ``record()`` gives the JSON shape documented in the README."""

    rule: str
    detector: str
    severity: str
    summary: str
    fingerprint: str
    at: datetime | None = None
    table: str | None = None
    relid: int | None = None
    actor: str | None = None
    db_user: str | None = None
    role: str | None = None
    client_addr: str | None = None
    application_name: str | None = None
    txids: list[int] = field(default_factory=list)
    changes: int | None = None
    revert: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    actions: tuple[Action, ...] = ()
    id: int | None = None

    def record(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in _FINDING_KEYS}
        if self.id is None:
            del out["id"]
        out["detail"] = self.detail
        return out


# --------------------------------------------------------------------------- subjects


def who(actor: str | None, db_user: str | None) -> str:
    """A person's words for a subject: ``mallory (login app_rw)`` or ``login role app_rw``."""
    if actor is not None:
        return f"{actor} (login {db_user})"
    return f"login role {db_user}"


def _utc(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _revert_command(
    txids: Sequence[int],
    transactions: int,
    actor: str | None,
    db_user: str | None,
    first: datetime | None,
    last: datetime | None,
) -> str:
    """The command that undoes exactly these transactions (a dry run)."""
    if txids and transactions <= len(txids):
        return "pgaudit-tool revert " + " ".join(f"--txid {t}" for t in txids) + " --dry-run"
    who_opt = (
        f"--actor {shlex.quote(actor)}"
        if actor is not None
        else f"--db-user {shlex.quote(str(db_user))}"
    )
    since = (first or datetime.now(UTC)) - timedelta(microseconds=1)
    return (
        f"pgaudit-tool revert {who_opt} --since {shlex.quote(since.isoformat())}"
        f" --until {shlex.quote((last or since).isoformat())} --dry-run"
    )


# --------------------------------------------------------------------------- judging a batch


def judge(conn: psycopg.Connection[Any], rules: Rules, base: Baseline) -> list[Finding]:
    """Every finding of the batch loaded by :func:`load_batch`; then the baseline learns it."""
    batch = cells(conn)
    if not batch:
        return []
    findings: list[Finding] = []
    findings += _mass_and_destructive(conn, rules, base)
    findings += _sensitive(conn, rules, batch)
    findings += _new_actor(rules, base, batch)
    findings += _off_hours(rules, base, batch)
    findings += _burst(rules, base, batch)
    findings += _new_client(rules, base, batch)
    base.observe(batch, largest_by_subject(conn))
    return findings


def _finding(rule: Rule, summary: str, fingerprint: str, **facts: Any) -> Finding:
    return Finding(
        rule=rule.name,
        detector=rule.detector,
        severity=rule.severity,
        summary=summary,
        fingerprint=fingerprint,
        actions=rule.actions,
        **facts,
    )


def _floor(rules: Rules) -> int:
    floors = [r.get("min_rows") for r in rules.of("destructive")]
    for r in rules.of("mass_change"):
        floors += [
            r.get("min_rows"),
            max(1, math.ceil(r.get("min_fraction") * r.get("min_table_rows"))),
        ]
    return min(floors, default=1 << 62)


def _mass_and_destructive(
    conn: psycopg.Connection[Any], rules: Rules, base: Baseline
) -> list[Finding]:
    if not rules.of("mass_change") and not rules.of("destructive"):
        return []
    out: list[Finding] = []
    for row in fetch(conn, TX_TABLES, [_floor(rules)]):
        ops = {k: int(v) for k, v in row["ops"].items()}
        for rule in rules.of("mass_change"):
            out += _mass(rule, row, ops, base)
        for rule in rules.of("destructive"):
            out += _destructive(rule, row, ops, base)
    return out


def _tx_facts(row: Mapping[str, Any], ops: Mapping[str, int]) -> dict[str, Any]:
    single = row["tables_in_tx"] <= 1
    revert = (
        f"pgaudit-tool revert --txid {row['txid']} --dry-run"
        if single
        else f"pgaudit-tool revert --txid {row['txid']} --dry-run  # also undoes its changes to"
        f" {row['tables_in_tx'] - 1} other table(s)"
    )
    return {
        "at": row["at"],
        "table": row["table_name"],
        "relid": row["relid"],
        "actor": row["actor"],
        "db_user": row["db_user"],
        "role": row["role"],
        "client_addr": row["client_addr"],
        "application_name": row["application_name"],
        "txids": [row["txid"]],
        "revert": revert,
    }


def _rows_phrase(ops: Mapping[str, int]) -> str:
    parts = [(n, _VERBS[op]) for op, n in sorted(ops.items(), key=lambda kv: -kv[1]) if n]
    if len(parts) == 1:
        n, verb = parts[0]
        return f"{verb} {n} row{'s' if n != 1 else ''}"
    total = sum(n for n, _ in parts)
    return f"changed {total} rows ({', '.join(f'{n} {verb}' for n, verb in parts)})"


def _compared(subject: str, total: int, base: Baseline) -> str:
    largest = base.largest.get(subject)
    if not largest:
        return ", a first transaction for them in the baseline window"
    return f", {total / largest:.0f}x their largest transaction of the baseline window ({largest} rows)"


def _mass(
    rule: Rule, row: Mapping[str, Any], ops: Mapping[str, int], base: Baseline
) -> list[Finding]:
    total = int(row["total"])
    if not rule.matches(
        table=row["table_name"], actor=row["actor"], roles=(row["db_user"], row["role"])
    ):
        return []
    if rule.ops and not any(_OP_NAMES[o] in rule.ops for o in ops):
        return []
    table_rows = int(row["table_rows"] or 0)
    before = max(table_rows + ops.get("D", 0) + ops.get("T", 0) - ops.get("I", 0), total)
    by_rows = total >= rule.get("min_rows")
    fraction = total / before if before else 0.0
    by_fraction = before >= rule.get("min_table_rows") and fraction >= rule.get("min_fraction")
    if not (by_rows or by_fraction):
        return []
    subject = subject_of(row["actor"], row["db_user"])
    share = f" (about {fraction:.0%} of the table)" if by_fraction else ""
    summary = (
        f"{who(row['actor'], row['db_user'])} {_rows_phrase(ops)} of {row['table_name']}{share}"
        f" in one transaction at {_utc(row['at'])}{_compared(subject, total, base)}"
    )
    detail = {
        "ops": ops,
        "min_rows": rule.get("min_rows"),
        "min_fraction": rule.get("min_fraction"),
        "table_rows_estimate": before,
        "baseline_largest": base.largest.get(subject),
    }
    return [
        _finding(
            rule,
            summary,
            f"{row['txid']}:{row['relid']}",
            changes=total,
            detail=detail,
            **_tx_facts(row, ops),
        )
    ]


def _destructive(
    rule: Rule, row: Mapping[str, Any], ops: Mapping[str, int], base: Baseline
) -> list[Finding]:
    if not rule.matches(
        table=row["table_name"], actor=row["actor"], roles=(row["db_user"], row["role"])
    ):
        return []
    truncated = "T" in ops and (not rule.ops or "TRUNCATE" in rule.ops)
    deleted = ops.get("D", 0) if (not rule.ops or "DELETE" in rule.ops) else 0
    if not truncated and deleted < rule.get("min_rows"):
        return []
    actor = who(row["actor"], row["db_user"])
    if truncated:
        summary = (
            f"{actor} truncated {row['table_name']} at {_utc(row['at'])} ({ops['T']} rows removed)"
        )
        changes = ops["T"]
    else:
        summary = (
            f"{actor} deleted {deleted} rows of {row['table_name']} in one transaction at"
            f" {_utc(row['at'])}{_compared(subject_of(row['actor'], row['db_user']), deleted, base)}"
        )
        changes = deleted
    detail = {"ops": ops, "min_rows": rule.get("min_rows"), "truncate": truncated}
    return [
        _finding(
            rule,
            summary,
            f"{row['txid']}:{row['relid']}",
            changes=changes,
            detail=detail,
            **_tx_facts(row, ops),
        )
    ]


def _sensitive(conn: psycopg.Connection[Any], rules: Rules, batch: Sequence[Cell]) -> list[Finding]:
    out: list[Finding] = []
    tables = {c.relid: c.table_name for c in batch}
    for rule in rules.of("sensitive_column"):
        columns = list(rule.get("columns") or ())
        if not columns:
            continue
        for relid, name in tables.items():
            if not rule.matches(table=name):
                continue
            out += _sensitive_table(conn, rule, relid, columns)
    return out


def _value_matches(expected: Any, value: Any) -> bool:
    if expected is None:
        return True
    options = expected if isinstance(expected, list) else [expected]
    return any(value == o and isinstance(value, bool) == isinstance(o, bool) for o in options)


def _sensitive_table(
    conn: psycopg.Connection[Any], rule: Rule, relid: int, columns: list[str]
) -> list[Finding]:
    by_tx: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in fetch(conn, SENSITIVE, [columns, relid]):
        op = _OP_NAMES[row["op"]]
        if rule.ops and op not in rule.ops:
            continue
        if not rule.matches(
            table=row["table_name"], actor=row["actor"], roles=(row["db_user"], row["role"])
        ):
            continue
        if not (
            _value_matches(rule.get("old"), row["old_value"])
            and _value_matches(rule.get("new"), row["new_value"])
        ):
            continue
        by_tx[row["txid"]].append(row)
    out = []
    for txid, rows in by_tx.items():
        first = rows[0]
        cols = sorted({r["column_name"] for r in rows})
        keys = [r["pk"] for r in rows]
        sample = rows[0]
        change = (
            f" from {_json(sample['old_value'])} to {_json(sample['new_value'])}"
            if len(rows) == 1
            else f" on {len(rows)} rows"
        )
        summary = (
            f"{who(first['actor'], first['db_user'])} changed {', '.join(cols)} of {first['table_name']}"
            f" (key {_json(keys[0])}{' and more' if len(keys) > 1 else ''}){change}"
            f" at {_utc(first['at'])}"
        )
        ids = sorted({r["id"] for r in rows})
        revert = "pgaudit-tool revert " + " ".join(f"--change {i}" for i in ids[:50]) + " --dry-run"
        if len(ids) > 50:
            revert = f"pgaudit-tool revert --txid {txid} --dry-run"
        detail = {
            "columns": cols,
            "keys": keys[:_MAX_TXIDS],
            "change_ids": ids[:200],
            "old": [r["old_value"] for r in rows[:_MAX_TXIDS]],
            "new": [r["new_value"] for r in rows[:_MAX_TXIDS]],
        }
        out.append(
            _finding(
                rule,
                summary,
                f"{txid}:{relid}:{','.join(cols)}",
                at=max(r["at"] for r in rows),
                table=first["table_name"],
                relid=relid,
                actor=first["actor"],
                db_user=first["db_user"],
                role=first["role"],
                client_addr=first["client_addr"],
                application_name=first["application_name"],
                txids=[txid],
                changes=len(rows),
                revert=revert,
                detail=detail,
            )
        )
    return out


def _json(value: Any) -> str:
    from pgaudit_tool.output import to_json_text

    return to_json_text(value)


@dataclass
class _Group:
    """Cells gathered under one key: counts, time span and transactions."""

    first: Cell
    changes: int = 0
    transactions: int = 0
    txids: set[int] = field(default_factory=set)
    first_at: datetime | None = None
    last_at: datetime | None = None
    tables: set[str] = field(default_factory=set)

    def add(self, c: Cell) -> None:
        self.changes += c.changes
        self.transactions += c.transactions
        self.txids.update(c.txids)
        self.tables.add(c.table_name)
        self.first_at = c.first_at if self.first_at is None else min(self.first_at, c.first_at)
        self.last_at = c.last_at if self.last_at is None else max(self.last_at, c.last_at)

    def facts(self, table: str | None = None, relid: int | None = None) -> dict[str, Any]:
        c = self.first
        txids = sorted(self.txids)[:_MAX_TXIDS]
        exact = len(self.txids) <= _MAX_TXIDS and self.transactions <= _MAX_TXIDS
        return {
            "at": self.last_at,
            "table": table,
            "relid": relid,
            "actor": c.actor,
            "db_user": c.db_user,
            "role": c.role,
            "client_addr": c.client_addr,
            "application_name": c.application_name,
            "txids": txids,
            "changes": self.changes,
            "revert": _revert_command(
                txids,
                len(txids) if exact else self.transactions,
                c.actor,
                c.db_user,
                self.first_at,
                self.last_at,
            ),
        }


def _grouped(batch: Iterable[Cell], key: Any, rule: Rule) -> dict[Any, _Group]:
    groups: dict[Any, _Group] = {}
    for c in batch:
        if not rule.matches(
            table=c.table_name, op=_OP_NAMES[c.op], actor=c.actor, roles=(c.db_user, c.role)
        ):
            continue
        k = key(c)
        if k not in groups:
            groups[k] = _Group(c)
        groups[k].add(c)
    return groups


def _seasoned(base: Baseline, rule: Rule, at: datetime, relid: int | None) -> bool:
    """Whether the log (or the table) has as much history as the rule asks before ``at``."""
    need = rule.get("min_history")
    span = timedelta(seconds=parse_duration(need)) if need is not None else base.window
    start = base.history_start(relid)
    return start is not None and start <= at - span


def _new_actor(rules: Rules, base: Baseline, batch: Sequence[Cell]) -> list[Finding]:
    out = []
    for rule in rules.of("new_actor"):
        for (subject, relid), g in _grouped(batch, lambda c: (c.subject, c.relid), rule).items():
            if (subject, relid) in base.pairs or g.first_at is None:
                continue
            if not _seasoned(base, rule, g.first_at, relid):
                continue
            c = g.first
            summary = (
                f"{who(c.actor, c.db_user)} changed {c.table_name} for the first time in the baseline"
                f" window ({_days(base.window)}): {g.changes} row(s) in {g.transactions}"
                f" transaction(s) from {_utc(g.first_at)}"
            )
            out.append(
                _finding(
                    rule,
                    summary,
                    f"{subject}:{relid}:{g.first_at.isoformat()}",
                    detail={"baseline": _days(base.window)},
                    **g.facts(c.table_name, relid),
                )
            )
    return out


def _days(window: timedelta) -> str:
    if window >= timedelta(days=1) and window.total_seconds() % 86400 == 0:
        return f"{window.days} days"
    return f"{int(window.total_seconds() // 60)} min"


def _off_hours(rules: Rules, base: Baseline, batch: Sequence[Cell]) -> list[Finding]:
    out = []
    for rule in rules.of("off_hours"):
        zone = ZoneInfo(rule.get("timezone"))
        configured = rule.get("hours") is not None or rule.get("days") is not None
        odd = [c for c in batch if _is_off(rule, zone, configured, base, c)]
        for (subject, relid), g in _grouped(odd, lambda c: (c.subject, c.relid), rule).items():
            c = g.first
            assert g.first_at is not None
            local = g.first_at.astimezone(zone)
            why = (
                f"outside the working hours set ({_hours_text(rule)})"
                if configured
                else "at an hour they never worked in the baseline window"
            )
            summary = (
                f"{who(c.actor, c.db_user)} changed {g.changes} row(s) of {c.table_name} at"
                f" {local:%a %H:%M} {rule.get('timezone')}, {why}"
            )
            out.append(
                _finding(
                    rule,
                    summary,
                    f"{subject}:{relid}:{local:%Y-%m-%dT%H}",
                    detail={"learned": not configured},
                    **g.facts(c.table_name, relid),
                )
            )
    return out


def _hours_text(rule: Rule) -> str:
    parts = []
    if rule.get("days"):
        parts.append(",".join(rule.get("days")))
    if rule.get("hours"):
        a, b = rule.get("hours")
        parts.append(f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}")
    return " ".join(parts) + f" {rule.get('timezone')}"


def _is_off(rule: Rule, zone: ZoneInfo, configured: bool, base: Baseline, c: Cell) -> bool:
    if configured:
        local = c.minute.astimezone(zone)
        days = rule.get("days")
        if days and local.strftime("%a").lower()[:3] not in days:
            return True
        hours = rule.get("hours")
        if hours:
            minute = local.hour * 60 + local.minute
            start, end = hours
            inside = start <= minute < end if start <= end else (minute >= start or minute < end)
            return not inside
        return False
    seen = base.hours.get(c.subject, {})
    if sum(seen.values()) < rule.get("min_baseline"):
        return False
    hour = c.minute.astimezone(UTC).hour
    return all(seen.get((hour + d) % 24, 0) == 0 for d in (-1, 0, 1))


def _burst(rules: Rules, base: Baseline, batch: Sequence[Cell]) -> list[Finding]:
    out = []
    for rule in rules.of("burst"):
        minutes = int(rule.seconds("window") // 60) or 1
        span = timedelta(minutes=minutes)
        for subject, _g in _grouped(batch, lambda c: c.subject, rule).items():
            counts = dict(base.minutes.get(subject, {}))
            mine = [
                c
                for c in batch
                if c.subject == subject
                and rule.matches(
                    table=c.table_name, op=_OP_NAMES[c.op], actor=c.actor, roles=(c.db_user, c.role)
                )
            ]
            for c in mine:
                counts[c.minute] = counts.get(c.minute, 0) + c.changes
            peak = base.peaks.get((subject, minutes), 0)
            threshold = max(rule.get("min_changes"), rule.get("factor") * peak)
            hit = _first_window_over(counts, {c.minute for c in mine}, span, threshold)
            if hit is None:
                continue
            start, total = hit
            last = base.bursts.get((rule.name, subject))
            if last is not None and start < last:
                continue
            base.bursts[(rule.name, subject)] = start + span
            inside = [c for c in mine if start <= c.minute < start + span]
            window_group = _Group(inside[0])
            for c in inside:
                window_group.add(c)
            c = window_group.first
            summary = (
                f"{who(c.actor, c.db_user)} changed {total} rows in {minutes} min from"
                f" {_utc(start)}, {'%.0fx' % (total / peak) + ' their highest rate' if peak else 'with no activity'}"
                f" in the baseline window{f' ({peak} rows)' if peak else ''}"
            )
            tables = sorted(window_group.tables)
            out.append(
                _finding(
                    rule,
                    summary,
                    f"{subject}:{start.isoformat()}",
                    detail={
                        "window_minutes": minutes,
                        "threshold": threshold,
                        "baseline_peak": peak,
                        "tables": tables,
                        "subject": subject,
                        "window_end": (start + span).isoformat(),
                    },
                    **window_group.facts(tables[0] if len(tables) == 1 else None),
                )
            )
    return out


def _first_window_over(
    counts: Mapping[datetime, int], touched: set[datetime], span: timedelta, threshold: float
) -> tuple[datetime, int] | None:
    """The first window of ``span`` (starting on a minute, covering a touched minute) whose
    total reaches ``threshold``."""
    starts = sorted(
        {m - timedelta(minutes=k) for m in touched for k in range(int(span.total_seconds() // 60))}
    )
    for start in starts:
        total = sum(n for m, n in counts.items() if start <= m < start + span)
        if total >= threshold:
            return start, total
    return None


def _new_client(rules: Rules, base: Baseline, batch: Sequence[Cell]) -> list[Finding]:
    out = []
    for rule in rules.of("new_client"):
        for kind, attr, label in (
            ("addr", "client_addr", "address"),
            ("app", "application_name", "application"),
        ):

            def key(c: Cell, attr: str = attr) -> tuple[str, str]:
                return (c.db_user, getattr(c, attr) or ("local" if attr == "client_addr" else ""))

            for (db_user, value), g in _grouped(batch, key, rule).items():
                if (db_user, kind, value) in base.clients or g.first_at is None:
                    continue
                if not _seasoned(base, rule, g.first_at, None):
                    continue
                shown = "a local socket" if value == "local" and kind == "addr" else repr(value)
                summary = (
                    f"login role {db_user} changed audited tables from {label} {shown}, never used"
                    f" in the baseline window ({_days(base.window)}): {g.changes} row(s) in"
                    f" {g.transactions} transaction(s) from {_utc(g.first_at)}"
                )
                tables = sorted(g.tables)
                out.append(
                    _finding(
                        rule,
                        summary,
                        f"{db_user}:{kind}:{value}",
                        detail={"kind": kind, "value": value, "tables": tables},
                        **g.facts(tables[0] if len(tables) == 1 else None),
                    )
                )
    return out


def iter_records(findings: Iterable[Finding]) -> Iterator[dict[str, Any]]:
    for f in findings:
        yield f.record()
