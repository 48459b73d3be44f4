"""The ``pgaudit-tool`` command: a thin layer over :class:`pgaudit_tool.Audit`.

Data goes to stdout, messages to stderr. Exit codes are listed in ``EXIT_CODES``.
"""

from __future__ import annotations

import getpass
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO, TypeVar

import click

from pgaudit_tool import __version__
from pgaudit_tool.errors import AuditError, IntegrityProblem, InvalidInput, PermissionDenied

if TYPE_CHECKING:
    from pgaudit_tool.api import Audit

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = """\b
Exit codes:
  0  success (also when the reader of the output stops early: | head, quitting less)
  1  database error (the server's message is shown)
  2  bad input: unknown table or column, bad name, bad value, table not auditable
  3  cannot connect to the database
  4  the audit schema is not installed or is out of date (run 'install')
  5  permission denied
  6  revert refused: rows changed later would be overwritten (--on-conflict abort); nothing changed
  7  verify found the log tampered with, or doctor found auditing not intact
  8  a lock was not granted within --lock-timeout; nothing changed
  9  watch: another watcher is already running on this database
  130  interrupted (Ctrl-C): the running query is cancelled; says when nothing was changed
"""

_FORMATS = ("table", "csv", "json", "jsonl")


class _Group(click.Group):
    """Turns AuditError into a message on stderr and its documented exit code; a closed
    output pipe into exit 0 and Ctrl-C into exit 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AuditError as exc:
            _fail(ctx, exc)
        except KeyboardInterrupt:
            _interrupted(ctx)
        except BrokenPipeError:
            _output_closed(ctx)
        except Exception as exc:
            import psycopg

            if not isinstance(exc, psycopg.Error):
                raise
            from pgaudit_tool.db import translate

            _fail(ctx, translate(exc))


def _fail(ctx: click.Context, exc: AuditError) -> None:
    click.echo(f"error: {exc.message}", err=True)
    if exc.hint:
        click.echo(f"hint: {_as_flags(exc.hint, ctx.invoked_subcommand)}", err=True)
    ctx.exit(exc.exit_code)


#: How the revert's messages, which speak SQL and Python ("since", "fire_triggers": the keys of
#: its selection and its arguments, in double quotes), name the revert command's options.
_REVERT_FLAGS = {
    "changes": "--change ID",
    "txids": "--txid N",
    "actor": "--actor NAME",
    "db_user": "--db-user ROLE",
    "since": "--since TIME",
    "until": "--until TIME",
    "table": "--table",
    "pk": "--pk KEY",
    "to": "--to TIME",
    "on_conflict": "--on-conflict",
    "dry_run": "--dry-run",
    "fire_triggers": "--fire-triggers",
}


def _as_flags(hint: str, command: str | None) -> str:
    """A revert hint with its quoted argument names as the CLI's flags."""
    if command != "revert":
        return hint
    return re.sub(r'"([a-z_]+)"', lambda m: _REVERT_FLAGS.get(m.group(1), m.group(0)), hint)


#: Commands that change the database through connections of their own, so that an interrupted
#: run cannot tell whether it changed anything.
_OWN_CONNECTIONS = frozenset({"bench", "demo", "watch"})


def _interrupted(ctx: click.Context) -> None:
    """Ctrl-C (SIGINT): cancel the server's query, say whether anything was changed, exit 130.

    psycopg cancels the query it was waiting for when interrupted, then the transaction is
    rolled back; a write transaction that had not begun to commit changed nothing.
    """
    state = ctx.obj if isinstance(ctx.obj, _State) else None
    if state is not None:
        state.cancel()
    if ctx.invoked_subcommand in _OWN_CONNECTIONS:
        message = "interrupted"
    elif state is not None and state.may_have_changed():
        message = "interrupted after changes were committed"
    else:
        message = "interrupted: nothing was changed"
    # On a terminal, end the line of the echoed ^C first.
    click.echo(("\n" if sys.stderr.isatty() else "") + message, err=True)
    ctx.exit(130)


def _output_closed(ctx: click.Context) -> None:
    """The reader of the output went away (``| head``, quitting ``less``): stop quietly with
    exit 0, as ``git log | head`` does. What is still buffered for stdout goes to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass  # stdout is no file descriptor (click's CliRunner)
    ctx.exit(0)


class _State:
    """Per-invocation state: the connection, opened on first use."""

    def __init__(
        self,
        dsn: str | None,
        lock_timeout: str | None = None,
        params: Mapping[str, str | None] | None = None,
        password: bool | None = None,
    ) -> None:
        self.dsn = dsn
        self.lock_timeout = lock_timeout
        self.params = {k: v for k, v in (params or {}).items() if v}
        self.password = password  # -W: True, -w: False, else None (ask on a terminal)
        self.expanded = False  # -x: every table in expanded form
        self.pager = True  # --no-pager: False
        self.quiet = False  # -q: no messages nor progress on stderr, errors only
        self._audit: Audit | None = None

    def audit(self) -> Audit:
        if self._audit is None:
            from pgaudit_tool.api import Audit

            if self.password:  # -W: ask before connecting, as psql does
                self.params["password"] = _ask_password(self._user())
            prompt = _ask_password if self.password is None and sys.stdin.isatty() else None
            self._audit = Audit.connect(
                self.dsn,
                lock_timeout=self.lock_timeout,
                params=self.params,
                password_prompt=prompt,
            )
            # Every time the CLI reads or prints is UTC: a time written without a zone, and
            # those in the server's messages, as the rest of its output.
            self._audit.conn.execute("SET TimeZone TO 'UTC'")
        return self._audit

    def named_dsn(self) -> str | None:
        """The connection string the options name (None: they name no server)."""
        if not self.params:
            return self.dsn
        from pgaudit_tool.connection import resolve_conninfo

        return resolve_conninfo(self.dsn, params=self.params)

    def _user(self) -> str:
        """The user libpq will log in as (for -W's prompt)."""
        from psycopg.conninfo import conninfo_to_dict

        from pgaudit_tool.connection import resolve_conninfo

        given = conninfo_to_dict(resolve_conninfo(self.dsn, params=self.params)).get("user")
        return str(given or os.environ.get("PGUSER") or getpass.getuser())

    def may_have_changed(self) -> bool:
        """Whether this command may have committed a change (see ``db.may_have_changed``)."""
        from pgaudit_tool.db import may_have_changed

        return self._audit is not None and may_have_changed(self._audit.conn)

    def cancel(self) -> None:
        """Cancel the query the server may still be running for this command (closing the
        connection alone would leave it running until it next talks to the client)."""
        conn = None if self._audit is None else self._audit.conn
        if conn is None or conn.closed:
            return
        from psycopg import pq

        if conn.info.transaction_status != pq.TransactionStatus.ACTIVE:
            return
        try:
            if hasattr(conn, "cancel_safe"):  # psycopg >= 3.2
                conn.cancel_safe(timeout=5.0)
            else:
                conn.cancel()
        except Exception:  # best effort: the connection is closed next
            pass

    def close(self) -> None:
        if self._audit is not None:
            self.cancel()
            self._audit.close()


def _complete_tables(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[click.shell_completion.CompletionItem]:
    """Shell completion of table names, when the command line or the environment names a
    database that answers within 3 seconds without a password prompt; nothing otherwise."""
    from click.shell_completion import CompletionItem

    root = ctx.find_root().params
    params = {
        k: root.get(n)
        for k, n in (("host", "host"), ("port", "port"), ("user", "username"), ("dbname", "dbname"))
    }
    try:
        import psycopg
        from psycopg.conninfo import make_conninfo

        from pgaudit_tool.connection import resolve_conninfo
        from pgaudit_tool.db import table_names

        conninfo = make_conninfo(
            resolve_conninfo(root.get("dsn"), params=params), connect_timeout=3
        )
        with psycopg.connect(conninfo, autocommit=True) as conn:
            names = table_names(conn, incomplete)
    except Exception:  # completion must never print an error into the shell
        return []
    return [CompletionItem(name) for name in names]


def _table_or(other: str, help: str) -> Callable[[F], F]:
    """``--format table|OTHER`` of a command that has only these two forms."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", other]),
        default="table",
        show_default=True,
        help=help,
    )


def _format_option(func: F) -> F:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(_FORMATS),
        default="table",
        show_default=True,
        help="Output format.",
    )(func)


def _emit(
    records: Iterable[Mapping[str, Any]], fmt: str, columns: Sequence[str] | None = None
) -> int:
    """Write records to stdout; the table format on a terminal fits its width (expanded when
    rows are wider, unless -x says always) and goes through the pager."""
    from pgaudit_tool.output import TableLayout, render

    state = _current_state()
    expanded = state.expanded if state is not None else False
    if fmt != "table" or not sys.stdout.isatty():
        count = render(records, fmt, sys.stdout, columns, TableLayout(None, expanded or False))
        sys.stdout.flush()
        return count
    import shutil

    layout = TableLayout(shutil.get_terminal_size().columns, True if expanded else None)
    with _pager(state is None or state.pager) as out:
        return render(records, fmt, out, columns, layout)


@contextmanager
def _pager(wanted: bool) -> Iterator[TextIO]:
    """The pager as psql uses it (on a terminal, PAGER or `less -SRFX`; an empty PAGER or
    --no-pager: none), through click's pager handling; quitting it early ends quietly."""
    command = os.environ.get("PAGER", "less -SRFX")
    if not wanted or not command.strip() or not sys.stdin.isatty():
        yield sys.stdout
        sys.stdout.flush()
        return
    saved = os.environ.get("PAGER")
    os.environ["PAGER"] = command
    try:
        with click.get_pager_file() as out:
            yield out
    finally:
        if saved is None:
            del os.environ["PAGER"]


def _export(write: Callable[[BinaryIO], None]) -> None:
    """Hand stdout's bytes to an export written by the server (csv, json, jsonl)."""
    sys.stdout.flush()
    write(sys.stdout.buffer)


def _current_state() -> _State | None:
    """The invocation's state, when a command is running (not for a bare library call)."""
    ctx = click.get_current_context(silent=True)
    return ctx.find_object(_State) if ctx is not None else None


def _quiet() -> bool:
    state = _current_state()
    return state is not None and state.quiet


def _info(message: str) -> None:
    """A message on stderr, unless --quiet (errors are never silenced)."""
    if not _quiet():
        click.echo(message, err=True)


def _ask_password(user: str) -> str:
    """psql's prompt, on the terminal (never echoed)."""
    return getpass.getpass(f"Password for user {user}: ")


@click.group(
    cls=_Group, epilog=EXIT_CODES, context_settings={"help_option_names": ["-?", "--help"]}
)
@click.option(
    "--dsn",
    metavar="DSN",
    help="Connection string (key=value or URI). Default: libpq's PG* variables, service file "
    "and .pgpass; else DATABASE_URL.",
)
@click.option("-h", "--host", metavar="HOSTNAME", help="Server host or socket directory.")
@click.option("-p", "--port", metavar="PORT", help="Server port.")
@click.option("-U", "--username", metavar="USERNAME", help="Database user name.")
@click.option(
    "-d",
    "--dbname",
    metavar="DBNAME",
    help="Database name, or a connection string as in psql. -h, -p, -U, -d override the same "
    "parameters of --dsn (or DATABASE_URL); PG* variables fill what none of them gives.",
)
@click.option(
    "-w",
    "--no-password",
    "password",
    flag_value=False,
    default=None,
    help="Never ask for a password (fail instead).",
)
@click.option(
    "-W",
    "--password",
    "password",
    flag_value=True,
    default=None,
    help="Ask for a password before connecting (otherwise asked on a terminal when needed).",
)
@click.option(
    "-x",
    "--expanded",
    is_flag=True,
    help="Tables in expanded form (one line per column, as psql's \\x); without it, on a "
    "terminal, only when rows are wider than the terminal.",
)
@click.option(
    "-q", "--quiet", is_flag=True, help="No messages nor progress on stderr; errors only."
)
@click.option(
    "--no-pager",
    is_flag=True,
    help="Never page tables (default: PAGER, else less -SRFX, on a terminal).",
)
@click.option(
    "--lock-timeout",
    metavar="DURATION",
    help="How long to wait for a lock on a table a command changes (install, enable, disable, "
    "refresh, revert, doctor --fix), e.g. 5s, 1min; 0 waits without limit. Default: 5s, unless "
    "the server, database, role or PGOPTIONS set lock_timeout.",
)
@click.version_option(__version__, prog_name="pgaudit-tool")
@click.pass_context
def main(
    ctx: click.Context,
    dsn: str | None,
    host: str | None,
    port: str | None,
    username: str | None,
    dbname: str | None,
    password: bool | None,
    expanded: bool,
    quiet: bool,
    no_pager: bool,
    lock_timeout: str | None,
) -> None:
    """Database-level change capture for PostgreSQL: who changed what, when, from where."""
    params = {"host": host, "port": port, "user": username, "dbname": dbname}
    state = _State(dsn, lock_timeout, params, password)
    state.expanded, state.pager, state.quiet = expanded, not no_pager, quiet
    ctx.obj = state
    ctx.call_on_close(state.close)


@main.command()
@click.option("--dry-run", is_flag=True, help="Print the SQL that would run; change nothing.")
@click.option(
    "--repair",
    is_flag=True,
    help="Also at the newest revision, re-apply its functions, views and triggers (after one "
    "was dropped or edited by hand) and regenerate capture functions. History is untouched.",
)
@click.option(
    "--partition-interval",
    metavar="INTERVAL",
    help="Time range of each partition of the log, a PostgreSQL interval of at least 1 minute: "
    "'1 week' (default), '1 day', '6 hours', '1 month'. At install, from the first partition "
    "on; later, for the partitions created from then on.",
)
@click.option(
    "--partitions-ahead",
    type=click.IntRange(1, 1000),
    metavar="N",
    help="How many intervals after now maintain keeps partitions for (default 3).",
)
@click.pass_obj
def install(
    state: _State,
    dry_run: bool,
    repair: bool,
    partition_interval: str | None,
    partitions_ahead: int | None,
) -> None:
    """Create or upgrade the audit schema (idempotent, one transaction)."""
    audit = state.audit()
    if dry_run:
        if partition_interval is not None or partitions_ahead is not None:
            raise click.UsageError(
                "--dry-run does not take --partition-interval or --partitions-ahead"
            )
        click.echo(audit.install_sql(repair=repair), nl=False)
        return
    result = audit.install(
        repair=repair, partition_interval=partition_interval, partitions_ahead=partitions_ahead
    )
    if result.before is None:
        _info(f"installed the audit schema, revision {result.after}")
    elif result.before != result.after:
        _info(f"upgraded the audit schema from revision {result.before} to {result.after}")
    elif result.refreshed:
        _info(
            f"re-applied the functions, views and triggers of revision {result.after}"
            + ("" if repair else " (another version of pgaudit_tool had applied them)")
        )
    else:
        _info(f"the audit schema is up to date (revision {result.after})")


@main.command()
@click.argument("tables", nargs=-1, shell_complete=_complete_tables)
@click.option(
    "--schema",
    "schemas",
    multiple=True,
    metavar="SCHEMA",
    help="Every table of SCHEMA (repeatable).",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="COLUMN",
    help="Column never stored in the log (repeatable). Default: keep each table's current list.",
)
@click.option(
    "--truncate-content/--no-truncate-content",
    default=None,
    help="Store the rows removed by TRUNCATE (default: on for new tables, unchanged otherwise).",
)
@click.option(
    "--skip-unsuitable",
    is_flag=True,
    help="Leave out tables that cannot be audited instead of failing; each is named on stderr"
    " with the reason.",
)
@_format_option
@click.pass_obj
def enable(
    state: _State,
    tables: tuple[str, ...],
    schemas: tuple[str, ...],
    exclude: tuple[str, ...],
    truncate_content: bool | None,
    skip_unsuitable: bool,
    fmt: str,
) -> None:
    """Start capturing changes of TABLES (schema-qualified names; quote odd names as in SQL)."""
    from pgaudit_tool.tables import STATUS_COLUMNS

    rows = state.audit().enable(
        *tables,
        schemas=schemas,
        exclude=list(exclude) if exclude else None,
        capture_truncate=truncate_content,
        skip_unsuitable=skip_unsuitable,
        progress=_progress_bar(least=10) if sys.stderr.isatty() and not _quiet() else None,
    )
    _emit(rows, fmt, STATUS_COLUMNS)
    for name, why in rows.skipped.items():
        _info(f"{name}: skipped: {why}")
    skipped = f", {len(rows.skipped)} skipped" if rows.skipped else ""
    _info(f"capture enabled on {len(rows)} table(s){skipped}")


@main.command()
@click.argument("tables", nargs=-1, shell_complete=_complete_tables)
@click.option(
    "--schema",
    "schemas",
    multiple=True,
    metavar="SCHEMA",
    help="Every table of SCHEMA (repeatable).",
)
@click.pass_obj
def disable(state: _State, tables: tuple[str, ...], schemas: tuple[str, ...]) -> None:
    """Stop capturing changes of TABLES. Their history stays."""
    for name, was_enabled in state.audit().disable(*tables, schemas=schemas).items():
        _info(f"{name}: capture disabled" if was_enabled else f"{name}: was not audited")


@main.command()
@click.argument("tables", nargs=-1, required=True, shell_complete=_complete_tables)
@click.pass_obj
def refresh(state: _State, tables: tuple[str, ...]) -> None:
    """Regenerate capture of audited TABLES after DDL (renames, new partitions, new key)."""
    state.audit().refresh(*tables)
    _info(f"capture regenerated on {len(tables)} table(s)")


@main.command()
@_format_option
@click.pass_obj
def status(state: _State, fmt: str) -> None:
    """What is audited, and whether each table's capture triggers are present and ENABLE ALWAYS."""
    from pgaudit_tool.tables import STATUS_COLUMNS

    _emit(state.audit().status(), fmt, STATUS_COLUMNS)


_PK_HELP = "Row key: a JSON object ('{\"id\": 7}') or a bare value for a single-column key."
_PART_HELP = (
    " Of a composite key, a part is enough: the columns given (a bare value: the first),"
    " matching every row that has them."
)
_TIME_HELP = (
    "ISO-8601 (2026-11-25T14:00+01:00), PostgreSQL words (now, yesterday), an interval and"
    " 'ago' ('2 hours 30 minutes ago', '1h30m ago') or @EPOCH seconds (@1700000000)."
)


def _time(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A time option's text, labelled with the option for errors (the server parses it later)."""
    from pgaudit_tool.timeparse import TimeText

    return TimeText(value, max(param.opts, key=len)) if isinstance(value, str) else value


def _archive_option(func: F) -> F:
    """--archive DIR: also read the changes of partitions archived there and dropped."""
    return click.option(
        "--archive",
        type=click.Path(file_okay=False, exists=True),
        metavar="DIR",
        help="Also the changes of partitions archived to DIR and dropped from the log, as if"
        " they had never left it (needs pgaudit-tool[archive]).",
    )(func)


def _time_option(flag: str, text: str) -> Callable[[Any], Any]:
    """A --since/--until style option: an instant (see _TIME_HELP), checked by :func:`_time`."""
    return click.option(flag, metavar="TIME", callback=_time, help=text)


@main.command()
@click.argument("table", required=False, shell_complete=_complete_tables)
@click.option("--pk", metavar="KEY", help=_PK_HELP + _PART_HELP + " Needs TABLE.")
@click.option("--actor", help="Only changes made by this application user.")
@click.option("--db-user", help="Only changes made by this login role.")
@click.option("--txid", type=int, help="Only changes of this transaction.")
@click.option(
    "--op",
    type=click.Choice(["INSERT", "UPDATE", "DELETE", "TRUNCATE"], case_sensitive=False),
    help="Only changes of this kind.",
)
@_time_option("--since", "Only changes at or after TIME: " + _TIME_HELP)
@_time_option("--until", "Only changes before TIME.")
@click.option("--limit", type=click.IntRange(min=0), help="At most this many changes: the oldest.")
@click.option(
    "--last",
    type=click.IntRange(min=0),
    metavar="N",
    help="Only the N most recent changes (still listed oldest first). Not with --limit.",
)
@click.option(
    "--columns",
    metavar="LIST",
    help="Table format: these columns, comma-separated (any of the json format's keys, and "
    "changes). Default: id, at, table, op, pk, actor, db_user, changes.",
)
@click.option("--wide", is_flag=True, help="Table format: every column, as json has them.")
@_archive_option
@_format_option
@click.pass_obj
def history(
    state: _State,
    /,
    table: str | None,
    fmt: str,
    columns: str | None,
    wide: bool,
    **filters: Any,
) -> None:
    """Changes captured (of TABLE, or of every table), oldest first, streamed.

    --limit N keeps the oldest N of them, --last N the N most recent (in the same order). The
    table format shows what a person needs (for an UPDATE, each changed column as
    "column: before -> after"); --wide or --columns for the rest.
    """
    from pgaudit_tool.history import HISTORY_COLUMNS, PEOPLE_COLUMNS, for_people

    if filters["limit"] is not None and filters["last"] is not None:
        raise click.UsageError(
            "--limit and --last cannot be combined: --limit N lists the oldest N changes,"
            " --last N the most recent N"
        )
    if fmt == "table":
        shown = _history_columns(columns, wide, PEOPLE_COLUMNS, (*HISTORY_COLUMNS, "changes"))
        changes = state.audit().history(table, **filters)
        _emit((for_people(c) for c in changes) if "changes" in shown else changes, fmt, shown)
    else:
        _export(lambda out: state.audit().export_history(out, fmt, table, **filters))
    if filters["archive"] is None:
        window = {k: filters[k] for k in ("since", "until", "txid")}
        _note_retired(state, table, **window)


def _history_columns(
    given: str | None, wide: bool, default: Sequence[str], known: Sequence[str]
) -> Sequence[str]:
    if given is None:
        return known[:-1] if wide else default
    chosen = [c.strip() for c in given.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in known]
    if unknown or not chosen:
        raise click.BadParameter(
            f"unknown column(s) {', '.join(unknown)}; choose among {', '.join(known)}"
            if unknown
            else "name at least one column",
            param_hint="--columns",
        )
    return chosen


@main.command()
@click.argument("txid", type=int)
@_archive_option
@_format_option
@click.pass_obj
def transaction(state: _State, txid: int, archive: str | None, fmt: str) -> None:
    """Everything transaction TXID did, across tables, with its context."""
    from pgaudit_tool.history import HISTORY_COLUMNS

    _emit(state.audit().transaction(txid, archive=archive), fmt, HISTORY_COLUMNS)


@main.command()
@click.argument("table", shell_complete=_complete_tables)
@click.option("--pk", metavar="KEY", required=True, help=_PK_HELP + _PART_HELP)
@_archive_option
@_format_option
@click.pass_obj
def blame(state: _State, table: str, pk: str, archive: str | None, fmt: str) -> None:
    """Who last set each column of a row of TABLE, and when."""
    from pgaudit_tool.reconstruct import BLAME_COLUMNS

    lines = state.audit().blame(table, pk, archive=archive)
    _emit(lines, fmt, BLAME_COLUMNS)
    if archive is None and any(line["change_id"] is None for line in lines):
        # A column set by no recorded change: maybe by one that left the log.
        _note_retired(state, table)


@main.command("row-at")
@click.argument("table", shell_complete=_complete_tables)
@click.option("--pk", metavar="KEY", required=True, help=_PK_HELP)
@click.option(
    "--at", "at", metavar="TIME", callback=_time, required=True, help="The instant: " + _TIME_HELP
)
@_archive_option
@click.pass_obj
def row_at(state: _State, table: str, pk: str, at: str, archive: str | None) -> None:
    """Print a row of TABLE as it was at TIME, as JSON (null: it did not exist)."""
    from pgaudit_tool.output import to_json_text

    click.echo(to_json_text(state.audit().row_at(table, pk, at, archive=archive)))


@main.command("table-at")
@click.argument("table", shell_complete=_complete_tables)
@click.option(
    "--at", "at", metavar="TIME", callback=_time, required=True, help="The instant: " + _TIME_HELP
)
@click.option(
    "--into",
    metavar="SCHEMA.TABLE",
    help="Create this new table with the rows (original column types).",
)
@_archive_option
@_format_option
@click.pass_obj
def table_at(
    state: _State, table: str, at: str, into: str | None, archive: str | None, fmt: str
) -> None:
    """TABLE as it was at TIME: streamed, or materialized as a new table (--into)."""
    audit = state.audit()
    if into is not None:
        count = audit.table_at_into(table, at, into, archive=archive)
        _info(f"{into}: {count} row(s) as of {at}")
        return
    if fmt == "table":
        _emit(audit.table_at(table, at, archive=archive), fmt)
    else:
        _export(lambda out: audit.export_table_at(out, fmt, table, at, archive=archive))


@main.command()
@click.argument("table", shell_complete=_complete_tables)
@click.option(
    "--from",
    "since",
    metavar="TIME",
    callback=_time,
    required=True,
    help="Start instant: " + _TIME_HELP,
)
@click.option(
    "--to",
    "until",
    metavar="TIME",
    callback=_time,
    default="now",
    show_default=True,
    help="End instant.",
)
@_archive_option
@_format_option
@click.pass_obj
def diff(state: _State, table: str, since: str, until: str, archive: str | None, fmt: str) -> None:
    """Net change of every row of TABLE between two instants (inserted, deleted, changed columns)."""
    from pgaudit_tool.reconstruct import DIFF_COLUMNS

    _emit(state.audit().diff(table, since, until, archive=archive), fmt, DIFF_COLUMNS)


def _yes_option(func: F) -> F:
    """-y/--yes, taken by every command that asks for confirmation (see _confirm)."""
    return click.option(
        "--yes",
        "-y",
        is_flag=True,
        help="Do not ask for confirmation (needed when stdin is not a terminal).",
    )(func)


def _confirm(question: str, yes: bool) -> None:
    """Ask before a change, unless --yes; refuse without a terminal to ask on."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise InvalidInput("refusing to change anything without confirmation", hint="Pass --yes.")
    try:
        click.confirm(question, abort=True, err=True)
    except click.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):  # Ctrl-C at the question: exit 130
            raise KeyboardInterrupt from None
        raise


@main.command()
@click.option(
    "--output",
    "-o",
    type=click.Path(),
    help="Write the head to this file (default: stdout). It is written and flushed before the"
    " new block is committed: if it cannot be written, nothing is sealed (exit 2).",
)
@click.pass_obj
def checkpoint(state: _State, output: str | None) -> None:
    """Seal finished transactions into the hash chain and print its head, to keep outside the database."""
    from pgaudit_tool.output import to_json_text

    head = state.audit().checkpoint(output=None if output is None else Path(output))
    if output is None:
        click.echo(to_json_text(head) + "\n", nl=False)
    else:
        _info(f"checkpoint written to {output}")
    if head.get("seq") is not None:
        _info(f"chain head: block {head['seq']}, {head['changes']} change(s) sealed in it")


@main.command()
@click.option(
    "--against",
    type=click.Path(),
    help="A checkpoint file kept outside the database: the chain is then recomputed here, in"
    " the client, from the raw rows, and must still contain that head.",
)
@click.option(
    "--archive",
    type=click.Path(file_okay=False),
    help="An archive directory (see archive): the dropped partitions' rows are read from its"
    " files, each checked against the sha256 recorded when it was dropped, and their blocks"
    " recomputed.",
)
@_format_option
@click.pass_obj
def verify(state: _State, against: str | None, archive: str | None, fmt: str) -> None:
    """Recompute the hash chain in the client; exit 0 only when no audit row (changes,
    transactions, registry, layouts, history breaks) was edited, deleted, inserted or reordered."""
    from pgaudit_tool.integrity import VERIFY_COLUMNS, read_checkpoint

    head = None if against is None else read_checkpoint(Path(against))
    audit = state.audit()
    report = audit.verify_report(head, archive=archive)
    _emit(report.problems, fmt, VERIFY_COLUMNS)
    for note in report.notes:
        _info(note)
    transactions = report.unsealed.get("transaction", 0)
    changes = report.unsealed.get("change", 0)
    journal = report.unsealed.get("journal", 0)
    if changes or journal:
        _info(
            f"{changes} change(s) of {transactions} transaction(s) and {journal} registry"
            " change(s) are newer than the chain (not sealed yet)"
        )
    if report.problems:
        raise IntegrityProblem(f"the audit log is NOT intact: {len(report.problems)} problem(s)")
    _info("the audit log is intact")


@main.command()
@click.option(
    "--fix", is_flag=True, help="Apply the safe fixes (after confirmation), in one transaction."
)
@_yes_option
@click.option("--dry-run", is_flag=True, help="With --fix: print the fix SQL, change nothing.")
@_format_option
@click.pass_obj
def doctor(state: _State, fix: bool, yes: bool, dry_run: bool, fmt: str) -> None:
    """Check that auditing is intact; exit 7 when anything is wrong."""
    from pgaudit_tool.integrity import DOCTOR_COLUMNS

    audit = state.audit()
    problems = audit.doctor()
    _emit(problems, fmt, DOCTOR_COLUMNS)
    fixes = list(dict.fromkeys(p["fix"] for p in problems if p["fix"]))
    if fix and fixes:
        script = "".join(f"{statement};\n" for statement in fixes)
        if dry_run:
            click.echo("BEGIN;\n" + script + "COMMIT;")
            return
        _info(f"fixes to apply:\n{script}")
        _confirm(f"Apply {len(fixes)} fix(es)?", yes)
        audit.apply_fixes(fixes)
        problems = audit.doctor()
        _info(f"applied; {len(problems)} problem(s) left")
    errors = [p for p in problems if p["severity"] != "info"]
    if errors:
        raise IntegrityProblem(
            f"auditing is not intact: {len(errors)} problem(s)", hint="pgaudit-tool doctor --fix"
        )


@main.command()
@_format_option
@click.pass_obj
def maintain(state: _State, fmt: str) -> None:
    """For cron: seal the log and create the partitions it needs (idempotent).

    Prints one row per action taken (nothing when nothing was needed). Audited writes do not
    wait for it. Schedule it at least once per partition interval.
    """
    from pgaudit_tool.partitions import MAINTAIN_COLUMNS

    done = state.audit().maintain()
    _emit(done, fmt, MAINTAIN_COLUMNS)
    if not done:
        _info("nothing to do: the log is sealed and its partitions reach far enough ahead")


@main.command()
@click.option(
    "--before",
    required=True,
    metavar="TIME",
    callback=_time,
    help="Archive the partitions that end at or before TIME. " + _TIME_HELP,
)
@click.option(
    "--to",
    "directory",
    required=True,
    type=click.Path(file_okay=False),
    help="The archive directory (created if needed; one per database).",
)
@click.option(
    "--drop",
    is_flag=True,
    help="Then drop the archived partitions from the log, in one transaction (asks first).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be archived and the drop's SQL.")
@_yes_option
@_format_option
@click.pass_obj
def archive(
    state: _State, before: Any, directory: str, drop: bool, dry_run: bool, yes: bool, fmt: str
) -> None:
    """Write old, sealed partitions of the log to Parquet files with a manifest (and drop them).

    Re-running resumes: files already written intact are kept. Only sealed partitions are
    archived; the output says how to seal the rest. A legal hold (see hold) blocks --drop.
    """
    result = state.audit().archive(
        before,
        directory,
        drop=drop,
        dry_run=dry_run,
        confirm=_confirm_drop("Archive and then drop", yes),
        progress=_progress_lines(),
    )
    _emit_dropping(result, fmt, dry_run, "nothing to archive before that time")


def _confirm_drop(what: str, yes: bool) -> Callable[[Any], bool]:
    """The question archive and retention ask before dropping partitions (see _confirm)."""

    def confirm(plan: Any) -> bool:
        changes = sum(p.changes for p in plan.parts)
        _confirm(f"{what} {len(plan.parts)} partition pair(s) ({changes} changes)?", yes)
        return True

    return confirm


def _progress_lines() -> Callable[[str], None] | None:
    """Progress messages on stderr when it is a terminal (and not --quiet)."""
    return None if _quiet() or not sys.stderr.isatty() else _info


def _emit_dropping(result: Any, fmt: str, dry_run: bool, nothing: str) -> None:
    """The partitions archive or retention handled, why it stopped, the drop's SQL (dry run)."""
    from pgaudit_tool.archive import ARCHIVE_COLUMNS

    if result.stopped:
        _info(result.stopped)
    _emit([p.row() for p in result.parts], fmt, ARCHIVE_COLUMNS)
    if dry_run and result.drop_sql:
        _info(f"the drop would run, in one transaction:\n{result.drop_sql}")
    elif not result.parts:
        _info(nothing)


@main.command()
@click.option(
    "--keep",
    required=True,
    metavar="INTERVAL",
    help="How much history stays in the log: a PostgreSQL interval ('90 days', '90d', '7 years').",
)
@click.option(
    "--archive-to",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Archive what is older to this directory before dropping it (see archive).",
)
@click.option(
    "--no-archive",
    is_flag=True,
    help="Drop what is older without an archive: deleted for good (recorded, and sealed).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be dropped and the drop's SQL.")
@_yes_option
@_format_option
@click.pass_obj
def retention(
    state: _State,
    keep: str,
    archive_to: str | None,
    no_archive: bool,
    dry_run: bool,
    yes: bool,
    fmt: str,
) -> None:
    """The retention policy, for cron: seal, archive (or not) and drop old history.

    Drops the partition pairs of the log that ended more than --keep ago, oldest first, up to
    the first one under a legal hold or with rows not sealed. Needs --archive-to DIR, or
    --no-archive to delete them for good. The drop is recorded and sealed at once.
    """
    if archive_to is not None and no_archive:
        raise click.UsageError("--archive-to and --no-archive exclude each other")
    result = state.audit().retention(
        keep,
        archive_to=archive_to,
        no_archive=no_archive,
        dry_run=dry_run,
        confirm=_confirm_drop(
            "Archive and drop" if archive_to else "DELETE FOR GOOD, without an archive,", yes
        ),
        progress=_progress_lines(),
    )
    _emit_dropping(
        result,
        fmt,
        dry_run,
        f"nothing to drop: the log holds no partition that ended more than {keep} ago",
    )


@main.command()
@click.option("--table", "table", metavar="TABLE", help="Hold the history of this table.")
@click.option("--all", "everything", is_flag=True, help="Hold the whole log.")
@_time_option("--until", "The hold ends by itself at TIME (default: when released).")
@click.option("--reason", help="Why (case number, request); kept with the hold.")
@click.option(
    "--release",
    "release",
    multiple=True,
    type=int,
    metavar="ID",
    help="Release the hold with this id (repeatable).",
)
@click.option("--release-table", metavar="TABLE", help="Release every active hold on this table.")
@click.option("--release-all", is_flag=True, help="Release the holds on the whole log.")
@click.option("--list", "listing", is_flag=True, help="List the holds (with --all: released too).")
@_format_option
@click.pass_obj
def hold(
    state: _State,
    table: str | None,
    everything: bool,
    until: Any,
    reason: str | None,
    release: tuple[int, ...],
    release_table: str | None,
    release_all: bool,
    listing: bool,
    fmt: str,
) -> None:
    """Legal holds: keep history from being dropped by archive --drop or retention.

    hold --table T | --all [--until TIME] [--reason TEXT] places one; hold --release ID,
    --release-table T or --release-all releases; hold --list lists them.
    """
    from pgaudit_tool.archive import HOLD_COLUMNS

    audit = state.audit()
    releasing = bool(release) + bool(release_table) + release_all
    placing = bool(table) + everything
    if listing:
        if releasing or table or until is not None or reason:
            raise click.UsageError("--list takes no other option but --all")
        _emit(audit.holds(active=not everything), fmt, HOLD_COLUMNS)
        return
    if releasing:
        if releasing > 1 or placing or until is not None or reason:
            raise click.UsageError(
                "release with one of --release ID, --release-table T or --release-all"
            )
        done = audit.release_holds(
            list(release) or None, table=release_table, everything=release_all
        )
        _emit(done, fmt, HOLD_COLUMNS)
        _info(f"released {len(done)} hold(s)")
        return
    if placing != 1:
        raise click.UsageError("name what to hold: --table T or --all (or --list, --release)")
    _emit([audit.hold(table, until=until, reason=reason)], fmt, HOLD_COLUMNS)


@main.command()
@click.option(
    "--retired",
    is_flag=True,
    help="Instead, the partition pairs that left the log (archive --drop, retention): when,"
    " by whom, what they held and the archive they went to.",
)
@_format_option
@click.pass_obj
def partitions(state: _State, retired: bool, fmt: str) -> None:
    """List the partitions of the log with their time ranges (transaction start, UTC)."""
    from pgaudit_tool.partitions import PARTITION_COLUMNS, RETIRED_COLUMNS

    if retired:
        _emit(state.audit().retired(), fmt, RETIRED_COLUMNS)
    else:
        _emit(state.audit().partitions(), fmt, PARTITION_COLUMNS)


def _note_retired(state: _State, table: str | None, **window: Any) -> None:
    """After a reading of the live log alone: say on stderr what left the log that it may
    have needed (``Audit.retired``)."""
    from pgaudit_tool.partitions import retired_note

    try:
        left = state.audit().retired(table, **window)
    except PermissionDenied:
        _info("note: cannot tell whether history left the log (no privilege to read it)")
        return
    if left:
        _info(f"note: {retired_note(left)}")


@main.command()
@_yes_option
@click.option("--dry-run", is_flag=True, help="Show what would be re-attached, change nothing.")
@_format_option
@click.pass_obj
def reattach(state: _State, yes: bool, dry_run: bool, fmt: str) -> None:
    """After pg_dump/pg_restore into another database: re-attach history and capture to the
    tables by name (also done by doctor --fix)."""
    from pgaudit_tool.integrity import REATTACH_COLUMNS

    audit = state.audit()
    plan = audit.reattach(dry_run=True)
    moved = [r for r in plan if r["action"] != "unchanged"]
    if dry_run or not moved:
        _emit(plan, fmt, REATTACH_COLUMNS)
        if not dry_run:
            audit.reattach()  # records this database as the schema's home
            _info("nothing moved: every registered table has its OID")
        return
    _info(f"{len(moved)} table(s) to re-attach (see --dry-run)")
    _confirm(f"Re-attach {len(moved)} table(s)?", yes)
    _emit(audit.reattach(), fmt, REATTACH_COLUMNS)
    _info("re-attached; run 'pgaudit-tool doctor' to check")


@main.command()
@click.argument("table", required=False, shell_complete=_complete_tables)
@click.option(
    "--max-rows",
    type=int,
    metavar="N",
    help="Most rows one statement may change (each guarded operation counted on its own).",
)
@click.option(
    "--ops",
    "ops",
    multiple=True,
    metavar="OPS",
    help="Operations to guard, comma-separated: INSERT, UPDATE, DELETE, TRUNCATE (a guarded "
    "TRUNCATE is refused whatever it removes). Default: UPDATE,DELETE.",
)
@click.option(
    "--except-role",
    "except_roles",
    multiple=True,
    metavar="ROLE",
    help="Login roles that are members of ROLE (exact name) are not limited (repeatable).",
)
@click.option("--remove", is_flag=True, help="Remove the guard of TABLE.")
@click.option("--list", "list_", is_flag=True, help="List the guards (of TABLE, if given).")
@_format_option
@click.pass_obj
def guard(
    state: _State,
    table: str | None,
    max_rows: int | None,
    ops: tuple[str, ...],
    except_roles: tuple[str, ...],
    remove: bool,
    list_: bool,
    fmt: str,
) -> None:
    """Refuse, before it commits, any single statement that changes more than N rows of TABLE.

    The statement fails with SQLSTATE PGA01 and changes nothing, unless the login role is a
    member of an excepted role; each refusal is counted (--list: blocked) and written to the
    server log ('pgaudit_tool guard: ...'). Setting a guard again changes it. Only the owner of
    the audit schema sets or removes guards.
    """
    from pgaudit_tool.guard import DEFAULT_OPS, GUARD_COLUMNS, describe

    settings = max_rows is not None or ops or except_roles
    if list_:
        if remove or settings:
            raise InvalidInput("--list takes no --remove, --max-rows, --ops or --except-role")
        _emit(state.audit().guard_list(table), fmt, GUARD_COLUMNS)
        return
    if table is None:
        raise InvalidInput(
            "a table is required",
            hint="pgaudit-tool guard TABLE --max-rows N, guard --remove TABLE or guard --list",
        )
    if remove:
        if settings:
            raise InvalidInput("--remove takes no --max-rows, --ops or --except-role")
        removed = state.audit().guard_remove(table)
        _info(f"{table}: guard removed" if removed else f"{table}: had no guard")
        return
    if max_rows is None:
        raise InvalidInput(
            "--max-rows is required to set a guard", hint=f"pgaudit-tool guard {table} --max-rows N"
        )
    record = state.audit().guard(
        table, max_rows=max_rows, ops=ops or DEFAULT_OPS, except_roles=except_roles
    )
    _info(describe(record))


@main.command()
@click.argument("ids", nargs=-1, type=int, metavar="[ID]...")
@click.option(
    "--change",
    "changes",
    multiple=True,
    type=int,
    metavar="ID",
    help="Revert this recorded change (the id column of history); more IDs may follow.",
)
@click.option(
    "--txid",
    "txids",
    multiple=True,
    type=int,
    metavar="N",
    help="Revert every change of this transaction; more txids may follow.",
)
@click.option("--actor", help="Revert what this application user did (needs --since).")
@click.option("--db-user", help="Revert what this login role did (needs --since).")
@_time_option("--since", "With --actor/--db-user: transactions committed after TIME. " + _TIME_HELP)
@_time_option("--until", "... and committed at or before TIME (default: now).")
@click.option(
    "--table",
    shell_complete=_complete_tables,
    help="Put this table (or, with --pk, one row) back to its state --to TIME.",
)
@click.option("--pk", metavar="KEY", help=_PK_HELP + " Needs --table.")
@click.option(
    "--to", "to", metavar="TIME", callback=_time, help="With --table: the instant to go back to."
)
@click.option(
    "--on-conflict",
    type=click.Choice(["abort", "skip", "force"]),
    default="abort",
    show_default=True,
    help="Rows changed after the changes to revert: abort (change nothing, exit 6), "
    "skip (leave them as they are) or force (overwrite them).",
)
@click.option(
    "--fire-triggers",
    is_flag=True,
    help="Let the tables' own triggers fire on the revert's writes. By default they are "
    "switched off while it writes (which needs ownership of the tables), so rows come back "
    "exactly as recorded; constraint triggers and capture always fire.",
)
@click.option("--dry-run", is_flag=True, help="Print the SQL and the plan; change nothing.")
@_yes_option
@click.option(
    "--by",
    default="pgaudit-tool revert",
    show_default=True,
    metavar="NAME",
    help="Application user (actor) recorded for the revert's own transaction.",
)
@_table_or(
    "json",
    "table: the rows changed (or the SQL, with --dry-run) and the conflicts; json: all of it.",
)
@click.pass_obj
def revert(
    state: _State,
    /,
    ids: tuple[int, ...],
    changes: tuple[int, ...],
    txids: tuple[int, ...],
    dry_run: bool,
    yes: bool,
    fmt: str,
    **options: Any,
) -> None:
    """Undo recorded changes row by row, in one transaction, without overwriting later work.

    Select by --change ID..., --txid N..., --actor/--db-user with --since (transactions that
    committed in the window), or --table with --to (and --pk). Deleted rows come back with
    their full recorded image, inserted rows go, updated columns are put back. A row changed
    after the changes to revert is a conflict (see --on-conflict). The revert is recorded like
    any change, under --by, so it shows in history and can itself be reverted.
    """
    from pgaudit_tool.errors import RevertConflict

    if ids and (changes or txids):
        changes, txids = (changes + ids, txids) if changes else (changes, txids + ids)
    elif ids:
        raise InvalidInput("IDs need --change or --txid", hint="pgaudit-tool revert --change 12 13")
    show_progress = sys.stderr.isatty() and not _quiet()

    def confirm(plan: Any) -> bool:
        from pgaudit_tool.revert import describe

        _info(describe(plan, "--fire-triggers").rstrip())
        if not plan.planned_rows:
            return True
        _confirm(f"Revert {plan.planned_rows} row(s)?", yes)
        return True

    try:
        result = state.audit().revert(
            changes=changes or None,
            txids=txids or None,
            dry_run=dry_run,
            confirm=confirm,
            progress=_progress_bar() if show_progress else None,
            **options,
        )
    except RevertConflict as exc:
        _emit_revert_conflicts(exc.conflicts, fmt)
        raise
    _emit_revert(result, fmt)


def _progress_bar(least: int = 1000) -> Callable[[int, int, str], None]:
    """A progress callback for stderr (a terminal): the planning steps of a revert as one line
    rewritten in place, then a bar of the work done (rows applied, tables enabled) when there
    are at least ``least`` units of it."""
    state: dict[str, Any] = {}

    def update(done: int, total: int, label: str) -> None:
        if label.startswith("planning"):
            end = "\n" if label == "planning: done" else ""
            click.echo(
                f"\r\x1b[K{label} (step {min(done + 1, total)} of {total})", nl=False, err=True
            )
            click.echo(end, nl=False, err=True)
            return
        bar = state.get("bar")
        if bar is None and total >= least:
            bar = state["bar"] = click.progressbar(length=total, label=label, file=sys.stderr)
            bar.__enter__()
        if bar is not None:
            bar.label = label
            bar.update(done - bar.pos)
            if label == "done":
                bar.__exit__(None, None, None)

    return update


def _emit_revert_conflicts(conflicts: Sequence[Mapping[str, Any]], fmt: str) -> None:
    from pgaudit_tool.output import to_json_text
    from pgaudit_tool.revert import CONFLICT_COLUMNS

    if fmt == "json":
        click.echo(to_json_text({"conflicts": list(conflicts)}))
    elif conflicts:
        _emit(conflicts, "table", CONFLICT_COLUMNS)


def _emit_revert(result: Any, fmt: str) -> None:
    from pgaudit_tool.output import to_json_text
    from pgaudit_tool.revert import APPLIED_COLUMNS, describe

    if fmt == "json":
        click.echo(to_json_text(result.as_json()))
    elif result.dry_run:
        click.echo(result.sql, nl=False)
    else:
        _emit(result.applied, "table", APPLIED_COLUMNS)
        if result.conflicts:
            _emit_revert_conflicts(result.conflicts, "table")
    if result.dry_run:
        if fmt == "json":
            _info(describe(result, "--fire-triggers").rstrip())
        _info("dry run: nothing was changed")
    elif result.txid is None:
        _info(f"nothing to revert: {result.changes} change(s) selected, no row to change")
    else:
        _info(
            f"reverted {result.changes} change(s): {result.applied_rows} row(s) changed in "
            f"transaction {result.txid} (undo it with: pgaudit-tool revert --txid {result.txid})"
        )


def _bench_number(name: str, default: float, help: str) -> Callable[[F], F]:
    """A positive number option of bench (an int unless its default is a float)."""
    kind = click.FloatRange(min=1) if isinstance(default, float) else click.IntRange(min=1)
    return click.option(name, type=kind, default=default, show_default=True, help=help)


@main.command()
@_bench_number("--rows", 100_000, "Rows per bulk statement.")
@_bench_number("--clients", 2, "Concurrent clients for single-row and TPC-B runs.")
@_bench_number("--duration", 10.0, "Seconds per single-row / TPC-B run.")
@_bench_number("--repetitions", 3, "Alternating repetitions; medians are reported.")
@_bench_number(
    "--scale", 1, "pgbench's TPC-B scale factor (1: every transaction updates the same branch row)."
)
@_bench_number(
    "--large-scale",
    10,
    "Scale factor of the second TPC-B series (tpcb_scale10_*), in a schema of its own.",
)
@click.option(
    "--no-large-scale",
    is_flag=True,
    help="Skip the second TPC-B series (its tpcb_scale10_* figures are null).",
)
@click.option(
    "--no-pgbench",
    is_flag=True,
    help="Use the built-in driver for single-row updates and skip TPC-B.",
)
@_bench_number(
    "--history-rows", 1_000_000, "Audit rows to build before measuring row-at and table-at."
)
@click.option("--no-reconstruction", is_flag=True, help="Skip the row-at / table-at measurements.")
@_bench_number(
    "--watch-changes", 1_000_000, "Changes the watcher evaluates in one pass (watch_changes_per_s)."
)
@click.option("--no-watch", is_flag=True, help="Skip the watcher and guard measurements.")
@_bench_number(
    "--report-changes", 1_000_000, "Changes written for the report measurement (report_s)."
)
@click.option("--no-report", is_flag=True, help="Skip the report measurement.")
@_bench_number(
    "--archive-changes",
    10_000_000,
    "Archived changes history is read through (history_archive_*, in a throwaway database).",
)
@click.option("--no-archive-reading", is_flag=True, help="Skip the archive reading measurement.")
@_table_or(
    "json", "table: the figures with their targets and comparison points; json: every figure."
)
@click.pass_obj
def bench(
    state: _State,
    rows: int,
    clients: int,
    duration: float,
    repetitions: int,
    scale: int,
    large_scale: int,
    no_large_scale: bool,
    no_pgbench: bool,
    history_rows: int,
    no_reconstruction: bool,
    watch_changes: int,
    no_watch: bool,
    report_changes: int,
    no_report: bool,
    archive_changes: int,
    no_archive_reading: bool,
    fmt: str,
) -> None:
    """Measure capture overhead: unaudited vs audited, in a scratch schema removed afterwards."""
    from pgaudit_tool.bench import BenchConfig, render_table
    from pgaudit_tool.bench.render import TABLE_COLUMNS
    from pgaudit_tool.output import to_json_text

    config = BenchConfig(
        rows=rows,
        clients=clients,
        duration=duration,
        repetitions=repetitions,
        scale=scale,
        large_scale=large_scale,
        large_tpcb=not no_large_scale,
        use_pgbench=not no_pgbench,
        history_rows=history_rows,
        reconstruction=not no_reconstruction,
        watch_changes=watch_changes,
        watching=not no_watch,
        report_changes=report_changes,
        reporting=not no_report,
        archive_changes=archive_changes,
        archive_reading=not no_archive_reading,
    )
    result = state.audit().bench(config, progress=_info)
    if fmt == "json":
        click.echo(to_json_text(result))
    else:
        _emit(render_table(result), "table", TABLE_COLUMNS)


@main.command()
@click.option(
    "--keep", is_flag=True, help="Keep the demo schema (and an embedded server's data) afterwards."
)
@_format_option
@click.pass_obj
def demo(state: _State, keep: bool, fmt: str) -> None:
    """Run the whole job on sample data: install, enable, changes by two users, history.

    Without --dsn (and without PG* variables or DATABASE_URL) it starts an embedded
    PostgreSQL server in a temporary folder and removes it afterwards.
    """
    from pgaudit_tool.demo import run_demo

    run_demo(state.named_dsn(), fmt=fmt, keep=keep, out=sys.stdout, log=_info)


# --------------------------------------------------------------------------- watching

_RULES_HELP = (
    "TOML rules file (detectors, rules, guards; see the README, 'Watching'). Default: built-in."
)


def _stop_on_signals() -> Any:
    """An event set by SIGTERM or SIGINT: long commands finish their step and exit 0."""
    import signal
    import threading

    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():  # a second signal: leave now
            raise SystemExit(128 + signum)
        _info(f"{signal.Signals(signum).name.lower()}: stopping after the current step")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return stop


def _polling_options(interval_help: str, item: str) -> Callable[[F], F]:
    """--interval and --format table|jsonl of the commands that follow the log."""

    def decorate(func: F) -> F:
        func = click.option(
            "--interval",
            type=click.FloatRange(min=0, min_open=True),
            default=1.0,
            show_default=True,
            metavar="SECONDS",
            help=interval_help,
        )(func)
        return _table_or(
            "jsonl", f"Output format: one line per {item}, or one JSON object per line."
        )(func)

    return decorate


def _alert_line(record: Mapping[str, Any]) -> str:
    """One alert for a person: severity, id, rule, summary, then the revert command."""
    from pgaudit_tool.output import printable

    ident = f"#{record['id']} " if record.get("id") is not None else ""
    line = printable(f"[{record['severity']}] {ident}{record['rule']}: {record['summary']}")
    if record.get("revert"):
        line += "\n    undo: " + printable(record["revert"])
    return line


@main.command()
@_time_option("--since", "Start of the window (default: 24 hours ago). " + _TIME_HELP)
@_time_option("--until", "End of the window (default: now).")
@click.option(
    "--rules", "rules_file", metavar="FILE", type=click.Path(dir_okay=False), help=_RULES_HELP
)
@_format_option
@click.pass_obj
def anomalies(
    state: _State, since: str | None, until: str | None, rules_file: str | None, fmt: str
) -> None:
    """Scan a window of history with the detectors; change nothing.

    Findings are judged against the baseline window before --since. Exit 0 whether or not
    anything is found; the findings are the output.
    """
    found = state.audit().anomalies(since, until, rules_file)
    if fmt == "table":
        for record in found:
            click.echo(_alert_line(record))
        _info(f"{len(found)} finding(s)")
        return
    _emit(found, fmt)


@main.command()
@_time_option("--since", "Start of the window (default: the first change recorded). " + _TIME_HELP)
@_time_option("--until", "End of the window (default: now).")
@click.option(
    "--table",
    "tables",
    multiple=True,
    metavar="TABLE",
    shell_complete=_complete_tables,
    help="Only changes to this table (repeat for more).",
)
@click.option(
    "--actor", "actors", multiple=True, metavar="NAME", help="Only this application user (repeat)."
)
@click.option(
    "--db-user", "db_users", multiple=True, metavar="ROLE", help="Only this login role (repeat)."
)
@click.option("--title", metavar="TEXT", help="The report's title.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "md", "json"]),
    default="html",
    show_default=True,
    help="html: one self-contained file for a browser or printing; md: Markdown for mail, chat "
    "or tickets; json: the aggregates for other tools.",
)
@click.option(
    "--output",
    "-o",
    metavar="FILE",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the report to FILE (default: stdout; html needs FILE on a terminal).",
)
@click.pass_obj
def report(
    state: _State,
    /,
    since: str | None,
    until: str | None,
    tables: tuple[str, ...],
    actors: tuple[str, ...],
    db_users: tuple[str, ...],
    title: str | None,
    fmt: str,
    output: str | None,
) -> None:
    """A report of a window of history for people: summary, activity charts, who, what,
    incidents (alerts, largest transactions with the command that undoes them) and timeline.

    Aggregated on the server; the timeline and row changes are capped. Use --actor NAME for a
    report about one user, --format md | mail for a weekly report.
    """
    from pgaudit_tool.report import render

    if output is None and fmt == "html" and sys.stdout.isatty():
        raise InvalidInput(
            "an html report is a file for a browser, not for a terminal",
            hint="Write it to a file (--output report.html), or choose --format md.",
        )
    show_progress = sys.stderr.isatty() and not _quiet()

    def progress(step: int, total: int, label: str) -> None:
        click.echo(f"\r\x1b[Kreport: {label} (step {step} of {total})", nl=False, err=True)

    found = state.audit().report(
        since=since,
        until=until,
        tables=tables,
        actors=actors,
        db_users=db_users,
        title=title,
        progress=progress if show_progress else None,
    )
    if show_progress:
        click.echo("\r\x1b[K", nl=False, err=True)
    text = render(found, fmt)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write {output}: {exc.strerror or exc}") from None
    summary = found["summary"]
    _info(
        f"report: {summary['changes']} change(s) in {summary['transactions']} transaction(s)"
        f" written to {output} ({len(text.encode()):,} bytes)"
    )


@main.command()
@click.option(
    "--rules", "rules_file", metavar="FILE", type=click.Path(dir_okay=False), help=_RULES_HELP
)
@click.option("--once", is_flag=True, help="Process what is pending, then exit (for cron).")
@_polling_options("How often to look for newly committed changes.", "alert")
@click.pass_obj
def watch(state: _State, rules_file: str | None, once: bool, interval: float, fmt: str) -> None:
    """Evaluate newly committed changes continuously; store and print each alert.

    The position is kept in the database (audit.watch_cursor): after a restart, even after
    kill -9, no committed change is skipped and no alert is raised twice. One watcher per
    database (exit 9 when another runs). SIGTERM or SIGINT: stop after the current pass.
    """
    from pgaudit_tool.output import to_json_text

    def emit(record: Mapping[str, Any]) -> None:
        click.echo(to_json_text(record) if fmt == "jsonl" else _alert_line(record))
        sys.stdout.flush()

    stop = _stop_on_signals()
    if not once:
        _info(f"watch: watching every {interval:g} s; stop with Ctrl-C or SIGTERM")
    raised = state.audit().watch(
        rules_file, once=once, interval=interval, emit=emit, info=_info, stop=stop
    )
    _info(f"watch: {raised} alert(s) raised")


@main.command()
@_time_option("--since", "Only alerts raised at or after TIME. " + _TIME_HELP)
@click.option(
    "--severity", type=click.Choice(["info", "warning", "critical"]), help="This level and above."
)
@click.option("--rule", metavar="NAME", help="Only alerts of this rule.")
@click.option("--open", "open_only", is_flag=True, help="Only alerts not acknowledged yet.")
@click.option(
    "--ack",
    "ack_ids",
    multiple=True,
    type=int,
    metavar="ID",
    help="Acknowledge these alerts (more IDs may follow as arguments).",
)
@click.option(
    "--by", metavar="NAME", help="With --ack: who acknowledges (default: the login role)."
)
@click.argument("ids", nargs=-1, type=int, metavar="[ID]...")
@_format_option
@click.pass_obj
def alerts(
    state: _State,
    /,
    since: str | None,
    severity: str | None,
    rule: str | None,
    open_only: bool,
    ack_ids: tuple[int, ...],
    by: str | None,
    ids: tuple[int, ...],
    fmt: str,
) -> None:
    """List stored alerts, or acknowledge them (--ack ID...)."""
    if ack_ids:
        done = state.audit().ack_alerts([*ack_ids, *ids], by)
        _info(
            f"acknowledged {len(done)} alert(s)"
            + (f": {', '.join(map(str, done))}" if done else "")
        )
        return
    if ids:
        raise InvalidInput("alert IDs need --ack", hint="pgaudit-tool alerts --ack 12 13")
    from pgaudit_tool.watch import ALERT_COLUMNS

    found = state.audit().alerts(since=since, severity=severity, rule=rule, open_only=open_only)
    _emit(found, fmt, (*ALERT_COLUMNS, "acked_by") if fmt in ("table", "csv") else None)


@main.command()
@click.argument("table", required=False, shell_complete=_complete_tables)
@click.option("--actor", help="Only changes made by this application user.")
@click.option("--db-user", help="Only changes made by this login role.")
@click.option(
    "-n",
    "last",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many of the last committed changes to show first.",
)
@click.option(
    "--follow", "-f", is_flag=True, help="Then show every change as it commits, until Ctrl-C."
)
@_polling_options("With --follow: how often to look for new commits.", "change")
@click.pass_obj
def tail(
    state: _State,
    table: str | None,
    actor: str | None,
    db_user: str | None,
    last: int,
    follow: bool,
    interval: float,
    fmt: str,
) -> None:
    """The last committed changes, newest last; with --follow, every change as it commits."""
    from pgaudit_tool.output import to_json_text

    stop = _stop_on_signals() if follow else None
    changes = state.audit().tail(
        table, actor=actor, db_user=db_user, last=last, follow=follow, interval=interval, stop=stop
    )
    for change in changes:
        click.echo(to_json_text(change) if fmt == "jsonl" else _change_line(change))
        sys.stdout.flush()


def _change_line(c: Mapping[str, Any]) -> str:
    from pgaudit_tool.output import printable, to_json_text

    when = c["committed_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    who = c["actor"] if c["actor"] is not None else f"login {c['db_user']}"
    what = f" {','.join(c['changed'])}" if c.get("changed") else ""
    line = f"{when}  {c['op']:<8} {c['table']} {to_json_text(c['pk'])}{what}  by {who}  txid {c['txid']}"
    return printable(line)
