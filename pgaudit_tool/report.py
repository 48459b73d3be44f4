"""Reports: a window of history as one document for people (html, md) or tools (json).

:func:`collect` gathers the aggregates the ``audit.report_*`` functions compute on the server
(``sql/functions/11_report.sql``), in one ``REPEATABLE READ, READ ONLY`` transaction so that
every figure describes the same snapshot; the client never reads the window's rows, only these
figures and the capped timeline. :func:`render` turns them into html (self-contained: styles,
scripts and the chart library inline), Markdown or JSON, through Jinja2 templates with every
database value escaped.

The json format is the dict :func:`collect` returns (see ``README.md``, "Reports", for its keys).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import psycopg
from psycopg import IsolationLevel, sql
from psycopg.rows import dict_row

from pgaudit_tool.db import TableRef, translated_errors
from pgaudit_tool.errors import InvalidInput, NotInstalled
from pgaudit_tool.output import to_json_text, to_json_value

#: The formats of ``pgaudit-tool report``.
FORMATS = ("html", "md", "json")
#: work_mem of the report's transaction, when the session's is lower.
WORK_MEM = "64MB"
#: ``progress(step, total, label)``: called before each step of :func:`collect`.
Progress = Callable[[int, int, str], None]

_STEPS = ("summary, activity, actors, tables, transactions", "columns", "timeline rows", "alerts")


@dataclass(frozen=True)
class Limits:
    """Caps of a report (each keeps what it shows bounded, whatever the window's size)."""

    #: the largest transactions listed as incidents
    largest: int = 10
    #: a transaction with at least this many changes is a mass change (marked on the charts)
    mass_rows: int = 100
    #: transactions in the timeline (the latest)
    timeline: int = 50
    #: row changes shown per timeline transaction
    per_transaction: int = 20
    #: series per activity chart (the rest summed as "other")
    series: int = 10
    #: most changed rows per table, and columns per actor and per table
    top: int = 5
    #: alerts listed
    alerts: int = 50


def collect(
    conn: psycopg.Connection[Any],
    *,
    since: datetime | None,
    until: datetime,
    tables: Sequence[TableRef] = (),
    actors: Sequence[str] = (),
    db_users: Sequence[str] = (),
    title: str | None = None,
    limits: Limits = Limits(),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The report of the changes captured in [since, until) (see the module docstring)."""
    step = progress or (lambda _i, _n, _label: None)
    flt = [
        since,
        until,
        [t.oid for t in tables] or None,
        list(actors) or None,
        list(db_users) or None,
    ]
    old_level, old_autocommit = conn.isolation_level, conn.autocommit
    try:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            conn.autocommit = False
            conn.isolation_level = IsolationLevel.REPEATABLE_READ
        with translated_errors(), conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            if conn.isolation_level == IsolationLevel.REPEATABLE_READ:
                cur.execute("SET TRANSACTION READ ONLY")
            # The aggregates hash the window's keys: room for that, for this transaction only.
            cur.execute(
                "SELECT pg_catalog.set_config('work_mem', %s, true)"
                " WHERE pg_catalog.pg_size_bytes(pg_catalog.current_setting('work_mem'))"
                " < pg_catalog.pg_size_bytes(%s)",
                [WORK_MEM, WORK_MEM],
            )
            _require_functions(cur)
            return _collect(cur, flt, since, until, tables, actors, db_users, title, limits, step)
    finally:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            conn.autocommit = old_autocommit
            conn.isolation_level = old_level


def _require_functions(cur: psycopg.Cursor[dict[str, Any]]) -> None:
    row = cur.execute(
        "SELECT pg_catalog.to_regprocedure('audit.report_overview(timestamptz, timestamptz,"
        " regclass[], text[], text[], text, integer, integer, integer, integer)') IS NOT NULL AS ok"
    ).fetchone()
    if not row or not row["ok"]:
        raise NotInstalled(
            "the audit schema has no report functions (installed by an older version)",
            hint="Apply this version's functions: pgaudit-tool install.",
        )


def _collect(
    cur: psycopg.Cursor[dict[str, Any]],
    flt: list[Any],
    since: datetime | None,
    until: datetime,
    tables: Sequence[TableRef],
    actors: Sequence[str],
    db_users: Sequence[str],
    title: str | None,
    limits: Limits,
    step: Progress,
) -> dict[str, Any]:
    total = len(_STEPS)

    def rows(i: int, function: str, extra: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """``SELECT * FROM audit.<function>(<the window's filters>, <extra>)``, as step i."""
        step(i + 1, total, _STEPS[i])
        query = sql.SQL(
            "SELECT * FROM audit.{}(%s, %s, %s::oid[]::regclass[], %s::text[], %s::text[]{})"
        ).format(sql.Identifier(function), sql.SQL(", %s" * len(extra)))
        return [_plain(r) for r in cur.execute(query, [*flt, *extra]).fetchall()]

    now = cur.execute("SELECT pg_catalog.statement_timestamp() AS now").fetchone()
    generated_at = now["now"] if now else datetime.now(UTC)
    # One pass over the window for every section but the columns (audit.report_overview).
    step(1, total, _STEPS[0])
    overview = cur.execute(
        "SELECT * FROM audit.report_overview(%s, %s, %s::oid[]::regclass[], %s::text[],"
        " %s::text[], NULL, %s, %s, %s, %s)",
        [*flt, limits.series, limits.top, limits.largest, limits.timeline],
    ).fetchone()
    assert overview is not None
    summary = _plain(overview["summary"])
    first_at, last_at = summary.pop("first_at"), summary.pop("last_at")
    bucket = overview["bucket"]
    by_table, by_subject, subjects, subject_tables, table_rows, txs = (
        [_plain(r) for r in overview[key]]
        for key in (
            "by_table",
            "by_subject",
            "subjects",
            "subject_tables",
            "tables",
            "transactions",
        )
    )
    left_log = _left_log(cur, since, until, tables)
    columns = rows(1, "report_columns")
    latest = sorted(
        (t for t in txs if t["latest_rank"] is not None), key=lambda t: t["latest_rank"]
    )
    step(3, total, _STEPS[2])
    changes = [
        _plain(r)
        for r in cur.execute(
            "SELECT * FROM audit.report_changes(%s::text[]::xid8[], %s, %s,"
            " %s::oid[]::regclass[], %s)",
            [[str(t["txid"]) for t in latest], *flt[:3], limits.per_transaction],
        ).fetchall()
    ]
    alerts = rows(3, "report_alerts", [limits.alerts])

    for t in txs:
        t["revert"] = revert_command(t["txid"])
        t["mass"] = t["changes"] >= limits.mass_rows
    by_tx: dict[int, list[dict[str, Any]]] = {}
    for c in changes:
        by_tx.setdefault(c.pop("txid"), []).append(c)
    for t in latest:
        t["rows"] = by_tx.get(t["txid"], [])
        t["rows_more"] = t["changes"] - len(t["rows"])
    largest = sorted(
        (t for t in txs if t["largest_rank"] is not None), key=lambda t: t["largest_rank"]
    )
    for s in subjects:
        key = (s["kind"], s["name"])
        s["tables"] = [
            {k: v for k, v in r.items() if k not in ("kind", "name")}
            for r in subject_tables
            if (r["kind"], r["name"]) == key
        ]
        s["columns"] = _top_columns(
            [c for c in columns if (c["kind"], c["name"]) == key], limits.top
        )
    for t in table_rows:
        t["columns"] = [
            {"column": c["column"], "changes": c["changes"]}
            for c in _top_columns([c for c in columns if c["table"] == t["table"]], limits.top)
        ]
    shown = len(latest)
    more = summary["transactions"] - shown
    return {
        "title": title or _default_title(actors, db_users, tables),
        "generated_at": generated_at,
        "window": {
            "since": since,
            "until": until,
            "first_change_at": first_at,
            "last_change_at": last_at,
            "bucket": bucket,
            "left_log": left_log,
        },
        "filters": {
            "tables": [t.name for t in tables],
            "actors": list(actors),
            "db_users": list(db_users),
        },
        "summary": summary,
        "activity": {
            "bucket": bucket,
            "by_table": by_table,
            "by_subject": by_subject,
            "mass_changes": [
                {"txid": t["txid"], "at": t["committed_at"], "changes": t["changes"]}
                for t in largest
                if t["mass"]
            ],
        },
        "subjects": subjects,
        "tables": table_rows,
        "incidents": {
            "mass_rows": limits.mass_rows,
            "alerts": alerts,
            "largest_transactions": [_without(t, "rows", "rows_more") for t in largest],
        },
        "timeline": {
            "transactions": latest,
            "shown": shown,
            "total": summary["transactions"],
            "more": more,
            "more_command": _more_command(since, until, tables, actors, db_users) if more else None,
            "per_transaction": limits.per_transaction,
        },
    }


def revert_command(txid: int) -> str:
    """The command that shows (as a dry run) how to undo one transaction."""
    return f"pgaudit-tool revert --txid {txid} --dry-run"


def _more_command(
    since: datetime | None,
    until: datetime,
    tables: Sequence[TableRef],
    actors: Sequence[str],
    db_users: Sequence[str],
) -> str:
    """The history command listing every change of the report's window."""
    import shlex

    parts = ["pgaudit-tool", "history"]
    if len(tables) == 1:
        parts.append(tables[0].name)
    if since is not None:
        parts += ["--since", since.astimezone(UTC).isoformat()]
    parts += ["--until", until.astimezone(UTC).isoformat()]
    if len(actors) == 1:
        parts += ["--actor", actors[0]]
    if len(db_users) == 1:
        parts += ["--db-user", db_users[0]]
    return " ".join(shlex.quote(p) for p in parts)


def _default_title(
    actors: Sequence[str], db_users: Sequence[str], tables: Sequence[TableRef]
) -> str:
    about = [*actors, *db_users, *(t.name for t in tables)]
    return "Activity report" + (f": {', '.join(about)}" if about else "")


def _top_columns(rows: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """The ``top`` most changed (table, column) pairs of ``rows`` (already per subject)."""
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r["table"], r["column"])
        counts[key] = counts.get(key, 0) + r["changes"]
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [{"table": t, "column": c, "changes": n} for (t, c), n in ranked]


def _without(record: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in keys}


#: Columns renamed for the report's keys; xid8 values arrive as text.
_RENAMED = {"table_name": "table", "column_name": "column"}
_XIDS = frozenset({"txid", "largest_txid"})


def _left_log(
    cur: psycopg.Cursor[dict[str, Any]],
    since: datetime | None,
    until: datetime,
    tables: Sequence[TableRef],
) -> dict[str, Any] | None:
    """What of the window's history left the log (``audit.retired()``), for the report's
    notice: the partition pairs, their latest commit, the archives they went to; None: none."""
    pairs: dict[int, dict[str, Any]] = {}
    relids: list[int | None] = [t.oid for t in tables] or [None]
    for relid in relids:
        for row in cur.execute(
            "SELECT id, committed_max, archive FROM audit.retired(%s::oid::regclass, %s, %s)",
            (relid, since, until),
        ).fetchall():
            pairs[row["id"]] = row
    if not pairs:
        return None
    return {
        "pairs": len(pairs),
        "committed_max": max(p["committed_max"] for p in pairs.values()),
        "archives": sorted({p["archive"] for p in pairs.values() if p["archive"] is not None}),
        "unarchived": any(p["archive"] is None for p in pairs.values()),
    }


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k in _XIDS and v is not None:
            v = int(v)
        elif k == "txids" and v is not None:
            v = [int(x) for x in v]
        elif k == "client_addr" and v is not None:
            v = str(v)
        out[_RENAMED.get(k, k)] = v
    return out


# --------------------------------------------------------------------------- rendering


def render(report: dict[str, Any], fmt: str) -> str:
    """The report as ``html``, ``md`` or ``json`` text."""
    if fmt == "json":
        return to_json_text(report) + "\n"
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown report format {fmt!r}; choose among {', '.join(FORMATS)}")
    import jinja2

    from pgaudit_tool import __version__

    plain = to_json_value(report)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pgaudit_tool", "templates"),
        autoescape=fmt == "html",
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=fmt == "md",
    )
    env.filters.update(
        when=_when, num=_num, jsonv=_jsonv, clip=_clip, md=_md, code=_code, orempty=_orempty
    )
    env.globals.update(columns_of=_columns_of, cellv=_cell_html if fmt == "html" else _cell_text)
    context: dict[str, Any] = {
        "r": plain,
        "s": plain["summary"],
        "empty": not plain["summary"]["changes"],
        "version": __version__,
    }
    if fmt == "html":
        activity = plain["activity"]
        context.update(
            uplot_js=vendored("uPlot.iife.min.js"),
            uplot_css=vendored("uPlot.min.css"),
            chart_data=data_json(
                {
                    "start": plain["window"]["since"] or plain["window"]["first_change_at"],
                    "end": plain["window"]["last_change_at"]
                    if plain["window"]["since"] is None
                    else plain["window"]["until"],
                    "bucket": activity["bucket"],
                    "by_table": activity["by_table"],
                    "by_subject": activity["by_subject"],
                    "mass_changes": activity["mass_changes"],
                }
            ),
        )
    else:
        context["busiest"] = _busiest(plain["activity"]["by_table"])
    return env.get_template(f"report.{fmt}.j2").render(context)


#: Longest text shown of one value (row values, summaries); the rest is counted.
CLIP = 400


def _when(v: Any) -> str:
    if v is None:
        return ""
    text = str(v)
    try:
        at = datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return text
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def _num(v: Any) -> str:
    return "" if v is None else f"{v:,}" if isinstance(v, int) else str(v)


def _clip(v: Any, limit: int = CLIP) -> str:
    text = "" if v is None else str(v)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def _jsonv(v: Any) -> str:
    return _clip(to_json_text(v, compact=True))


def _orempty(v: Any) -> str:
    return "" if v is None else str(v)


_MD_SPECIAL = str.maketrans(
    {c: "\\" + c for c in "\\`*_[]|#"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"}
)


def _md(v: Any) -> str:
    """One Markdown table cell: no line break, no markup, no HTML."""
    from pgaudit_tool.output import printable

    if v is None:
        return ""
    text = printable(" ".join(_clip(v).splitlines()))
    return text.translate(_MD_SPECIAL)


def _code(v: Any) -> str:
    if v is None:
        return ""
    return "`" + str(v).replace("`", "'").replace("|", "\\|") + "`"


def _columns_of(change: dict[str, Any]) -> list[str]:
    """The columns of a change's images: the after image's order, then the before's others."""
    cols: list[str] = []
    for image in (change.get("new"), change.get("old")):
        if isinstance(image, dict):
            cols += [c for c in image if c not in cols]
    return cols


def _cell_text(image: Any, column: str) -> str:
    if not isinstance(image, dict) or column not in image:
        return ""
    v = image[column]
    return (
        "NULL" if v is None else _clip(v if isinstance(v, str) else to_json_text(v, compact=True))
    )


def _cell_html(image: Any, column: str) -> Any:
    from markupsafe import Markup, escape

    if not isinstance(image, dict) or column not in image:
        return Markup('<span class="null">(absent)</span>')
    if image[column] is None:
        return Markup('<span class="null">NULL</span>')
    return escape(_cell_text(image, column))


def _busiest(rows: list[dict[str, Any]], top: int = 10) -> list[dict[str, Any]]:
    """The ``top`` busiest buckets of the per-table activity, each with its tables' shares."""
    buckets: dict[str, dict[str, int]] = {}
    for r in rows:
        name = "other" if r["kind"] == "other" else str(r["name"])
        parts = buckets.setdefault(str(r["bucket"]), {})
        parts[name] = parts.get(name, 0) + int(r["changes"])
    ranked = sorted(buckets.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))[:top]
    return [
        {
            "bucket": b,
            "changes": sum(p.values()),
            "parts": ", ".join(f"{n}: {c}" for n, c in sorted(p.items(), key=lambda x: -x[1])),
        }
        for b, p in ranked
    ]


def vendored(name: str) -> str:
    """A file of the package's ``templates/vendor`` folder (the chart library)."""
    return (resources.files("pgaudit_tool") / "templates" / "vendor" / name).read_text("utf-8")


def data_json(report: Any) -> str:
    """The report as JSON safe inside an html ``<script>`` element."""
    text = json.dumps(report, ensure_ascii=False, default=str)
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
