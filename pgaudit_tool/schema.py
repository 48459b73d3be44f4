"""Install and upgrade the audit schema through the alembic revisions in ``migrations/``.

Each revision runs its once-only SQL, ``sql/schema/<revision>_*.sql``; then the functions,
views and triggers of ``sql/functions/`` are re-applied as a whole. The version table is
``audit.schema_version``; the comment of the schema names the SHA-256 of the ``sql/functions/``
applied last (:func:`functions_digest`), so that a database at the newest revision whose
functions another version of the tool applied gets this version's (:func:`functions_current`).
:func:`install` runs every pending revision in one transaction;
:func:`upgrade_sql` renders the same SQL without touching the database (``install --dry-run``).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from pgaudit_tool.errors import AuditError, InvalidInput, LockTimeout, NotInstalled
from pgaudit_tool.resources import data_dir, function_files, read_sql, schema_file

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection as SAConnection

SCHEMA = "audit"
VERSION_TABLE = "schema_version"
# Serialises concurrent installs of the same database (pg_advisory_xact_lock key). Advisory
# locks need no privilege: any role can hold this one and make installs wait, then fail with
# LockTimeout after the lock timeout, changing nothing (see _INSTALL_LOCK_HINT).
_INSTALL_LOCK_KEY = 0x70676175646974  # "pgaudit"
_INSTALL_LOCK_HINT = (
    "Wait for the other install to finish and retry. To see who holds the lock (the key's two"
    " halves): SELECT pid, usename, application_name, state FROM pg_locks JOIN pg_stat_activity"
    " USING (pid) WHERE locktype = 'advisory' AND classid = 7366497 AND objid = 1969514868;"
    " or wait longer with --lock-timeout (0: no limit)."
)


def alembic_config() -> Config:
    """An alembic Config pointing at the packaged migrations."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(data_dir("migrations")))
    return cfg


def head_revision() -> str:
    """The newest schema revision this version of the tool ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise AuditError("the packaged migrations have no head revision")
    return head


def is_known_revision(revision: str) -> bool:
    """Whether this version of the tool ships ``revision`` (False: a newer tool installed it)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def refuse_newer(revision: str | None) -> None:
    """Raise unless ``revision`` is None or one this tool ships (a newer tool installed it)."""
    if revision is not None and not is_known_revision(revision):
        raise NotInstalled(
            f"the audit schema is at revision {revision}, newer than this tool"
            f" (it knows up to {head_revision()}); nothing was changed",
            hint="Use the pgaudit_tool version that installed it, or a newer one.",
        )


def installed_revision(conn: psycopg.Connection[Any]) -> str | None:
    """The schema revision installed in the connected database, or None when not installed."""
    row = conn.execute(
        "SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.{VERSION_TABLE}",)
    ).fetchone()
    if row is None or not row[0]:
        return None
    found = conn.execute(
        sql.SQL("SELECT version_num FROM {}.{}").format(
            sql.Identifier(SCHEMA), sql.Identifier(VERSION_TABLE)
        )
    ).fetchone()
    return None if found is None else str(found[0])


def require_installed(conn: psycopg.Connection[Any]) -> str:
    """Raise NotInstalled unless the audit schema is installed at this tool's head revision."""
    current = installed_revision(conn)
    if current is None:
        raise NotInstalled(
            f"the audit schema is not installed in database {conn.info.dbname!r}",
            hint="Run 'pgaudit-tool install' first.",
        )
    head = head_revision()
    refuse_newer(current)
    if current != head:
        raise NotInstalled(
            f"the audit schema is at revision {current}, this tool needs {head}",
            hint="Run 'pgaudit-tool install' to upgrade it.",
        )
    return current


def functions_digest() -> str:
    """SHA-256 (hex) of this version's ``sql/functions/``, as :func:`functions_script` records it."""
    return _digest(read_sql(function_files()))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_RECORDED = re.compile(r"functions of pgaudit_tool (\S+), sha256 ([0-9a-f]{64})")


def functions_script() -> str:
    """``sql/functions/`` and the schema's comment naming the tool's version and their digest
    (read back by :func:`installed_functions`)."""
    text = read_sql(function_files())
    comment = (
        f"pgaudit_tool's audit log; functions of pgaudit_tool {tool_version()}, sha256"
        f" {_digest(text)} (of sql/functions/, applied by pgaudit-tool install)"
    )
    statement = sql.SQL("COMMENT ON SCHEMA {} IS {};").format(
        sql.Identifier(SCHEMA), sql.Literal(comment)
    )
    return f"{text}\n{statement.as_string(None)}\n"


def installed_functions(conn: psycopg.Connection[Any]) -> tuple[str, str] | None:
    """The version of the tool that last applied ``sql/functions/`` to the connected database,
    and their digest (None: not recorded: applied by a version that did not record it, or the
    schema's comment edited)."""
    row = conn.execute(
        "SELECT pg_catalog.obj_description(n.oid, 'pg_namespace')"
        " FROM pg_catalog.pg_namespace AS n WHERE n.nspname OPERATOR(pg_catalog.=) %s",
        (SCHEMA,),
    ).fetchone()
    found = _RECORDED.search(row[0]) if row and row[0] else None
    return (found.group(1), found.group(2)) if found else None


def functions_current(conn: psycopg.Connection[Any]) -> bool:
    """Whether the functions, views and triggers of the audit schema are this version's."""
    return functions_standing(conn)[0]


def functions_standing(conn: psycopg.Connection[Any]) -> tuple[bool, str | None]:
    """Whether the audit schema's functions are this version's, and the version of the tool
    that applied them when it is newer than this one (its functions must not be replaced by
    older ones unasked), else None; one look at the schema's comment."""
    recorded = installed_functions(conn)
    if recorded is None:
        return False, None
    version, digest = recorded
    if digest == functions_digest():
        return True, None
    newer = _version_key(version) > _version_key(tool_version())
    return False, version if newer else None


def tool_version() -> str:
    """This version of pgaudit_tool (imported late: the package imports this module)."""
    from pgaudit_tool import __version__

    return __version__


def _version_key(version: str) -> tuple[int, ...]:
    """A release number's parts (``0.10.2`` -> (0, 10, 2)), for ordering; () when it has none."""
    found = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(p) for p in found.group(0).split(".")) if found else ()


def prepare_schema(connection: SAConnection) -> None:
    """Lock against concurrent installs and create the audit schema, refusing a foreign one."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    try:
        connection.execute(
            text("SELECT pg_catalog.pg_advisory_xact_lock(:k)"), {"k": _INSTALL_LOCK_KEY}
        )
    except DBAPIError as exc:
        if not isinstance(exc.orig, psycopg.errors.LockNotAvailable):
            raise
        raise LockTimeout(
            "another install of the audit schema is running in this database, or another session"
            f" holds its advisory lock (key {_INSTALL_LOCK_KEY}), and the lock timeout passed;"
            " nothing was changed",
            hint=_INSTALL_LOCK_HINT,
        ) from None
    foreign = connection.execute(
        text(
            "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = :s)"
            " AND pg_catalog.to_regclass(:v) IS NULL"
            " AND EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            "             WHERE n.nspname = :s)"
        ),
        {"s": SCHEMA, "v": f"{SCHEMA}.{VERSION_TABLE}"},
    ).scalar()
    if foreign:
        raise AuditError(
            f"a schema named {SCHEMA!r} already exists and was not created by pgaudit_tool",
            hint="Rename or drop that schema; pgaudit_tool installs into its own 'audit' schema.",
        )
    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))


def run_sql_revision(revision: str) -> None:
    """Run the once-only SQL of one revision (called from a migration's ``upgrade()``)."""
    _run_script(read_sql([schema_file(revision)]))


def apply_functions() -> None:
    """Re-apply ``sql/functions/`` (called by the alembic environment after the revisions)."""
    _run_script(functions_script())


def _run_script(script: str) -> None:
    """Online the text goes to the server as is (psycopg runs several statements when no
    parameters are given); offline it is printed verbatim."""
    from alembic import context

    if context.is_offline_mode():
        context.get_context().impl.static_output(script)
        return
    _psycopg(context.get_bind()).execute(script)


def _psycopg(connection: SAConnection) -> psycopg.Connection[Any]:
    """The psycopg connection under a SQLAlchemy one (SQL scripts go to it as they are)."""
    driver_conn = connection.connection.driver_connection
    if not isinstance(driver_conn, psycopg.Connection):
        raise AuditError("pgaudit_tool migrations need the psycopg (3) driver")
    return driver_conn


def install(
    conninfo: str,
    lock_timeout: str | None = None,
    *,
    repair: bool = False,
    partitioning: Partitioning | None = None,
    committing: Callable[[], None] | None = None,
) -> tuple[str | None, str, bool]:
    """Install or upgrade the audit schema to the head revision, in one transaction.

    Returns (revision before, revision after, whether ``sql/functions/`` was re-applied at the
    same revision). Idempotent: nothing runs when already at head with this version's
    functions; ``sql/functions/`` is re-applied when another version of the tool applied them
    (an upgrade of the package with no new revision) or with ``repair`` (functions, views and
    triggers dropped or edited by hand come back as this version has them); capture functions
    are regenerated. ``partitioning``: settings of the partitioned log, used from the first
    partitions on when the schema is created (or upgraded to revision 0009), for the partitions
    created from now on otherwise. ``lock_timeout``: of the install's transaction (see
    ``db.choose_lock_timeout``). ``committing``: called right before the transaction commits a
    change.
    """
    from alembic import command
    from sqlalchemy import text

    from pgaudit_tool.connection import sqlalchemy_engine

    engine = sqlalchemy_engine(conninfo)
    try:
        with _driver_errors(), engine.begin() as connection:
            if lock_timeout is not None:
                connection.execute(
                    text("SELECT set_config('lock_timeout', :v, true)"), {"v": lock_timeout}
                )
            before = _current_revision(connection)
            refuse_newer(before)
            with _partitioning_errors(partitioning):
                # Read by revision 0009 when it creates the settings (the first partitions).
                for name, value in (
                    ("pgaudit.partition_interval", partitioning and partitioning.interval),
                    ("pgaudit.partitions_ahead", partitioning and partitioning.ahead),
                ):
                    if value is not None:
                        connection.execute(
                            text("SELECT set_config(:n, :v, true)"), {"n": name, "v": str(value)}
                        )
                cfg = alembic_config()
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")
                after = _current_revision(connection)
                refreshed = before == after and (
                    repair or not _keep_functions(_psycopg(connection))
                )
                if refreshed:
                    _psycopg(connection).execute(functions_script())
                changed = partitioning is not None and _set_partitioning(connection, partitioning)
            if committing is not None and (refreshed or before != after or changed):
                committing()
    finally:
        engine.dispose()
    return before, after or head_revision(), refreshed


def _keep_functions(conn: psycopg.Connection[Any]) -> bool:
    """At the newest revision: whether the functions stay as they are (this version's), or
    raise when a newer version of the tool applied them (``repair`` replaces them anyway)."""
    current, newer = functions_standing(conn)
    if current:
        return True
    if newer is not None:
        raise NotInstalled(
            f"the audit schema's functions were applied by pgaudit_tool {newer}, newer than"
            f" this one ({tool_version()}); nothing was changed",
            hint="Use that version or a newer one; install --repair applies this version's"
            " functions anyway.",
        )
    return False


@dataclass(frozen=True)
class Partitioning:
    """Settings of the partitioned log (``audit.partitioning``); None leaves one as it is.

    ``interval``: time range of each new partition, PostgreSQL interval text of at least one
    minute, whole months ("1 month", "1 year") or no months ("1 day", "1 week", "6 hours").
    ``ahead``: how many intervals after now ``maintain`` keeps partitions (1 to 1000).
    """

    interval: str | None = None
    ahead: int | None = None


def _set_partitioning(connection: SAConnection, partitioning: Partitioning) -> bool:
    """Apply the settings (and create the partitions they call for); True when they changed."""
    from sqlalchemy import text

    before = connection.execute(text("SELECT * FROM audit.partitioning")).one()
    after = connection.execute(
        text("SELECT * FROM audit.set_partitioning(CAST(:i AS interval), CAST(:a AS integer))"),
        {"i": partitioning.interval, "a": partitioning.ahead},
    ).one()
    if before == after:
        return False
    connection.execute(text("SELECT count(*) FROM audit._partition_ahead()"))
    return True


@contextmanager
def _partitioning_errors(partitioning: Partitioning | None) -> Iterator[None]:
    """Bad partitioning settings as InvalidInput (the server refuses them: nothing changed)."""
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except (DBAPIError, psycopg.Error) as exc:
        # Revisions run on the psycopg connection itself: its errors come unwrapped.
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        bad = isinstance(
            orig, psycopg.errors.InvalidDatetimeFormat | psycopg.errors.DatetimeFieldOverflow
        ) or (
            isinstance(orig, psycopg.errors.CheckViolation)
            and orig.diag.constraint_name
            in ("partition_interval_check", "partitioning_ahead_check")
        )
        if partitioning is None or not bad:
            raise
        if isinstance(orig, psycopg.errors.CheckViolation) and "ahead" in str(
            orig.diag.constraint_name
        ):
            raise InvalidInput(
                f"partitions ahead must be from 1 to 1000, not {partitioning.ahead}"
            ) from None
        raise InvalidInput(
            f"partition interval {partitioning.interval!r} is not allowed: it must be a"
            " PostgreSQL interval of at least 1 minute, and either whole months or no months",
            hint="Examples: 1 minute, 6 hours, 1 day, 1 week, 1 month, 1 year.",
        ) from None


@contextmanager
def _driver_errors() -> Iterator[None]:
    """Re-raise the psycopg error inside SQLAlchemy's wrapper, for the caller to translate."""
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except DBAPIError as exc:
        if isinstance(exc.orig, psycopg.Error):
            raise exc.orig from None
        raise


def _current_revision(connection: SAConnection) -> str | None:
    from alembic.migration import MigrationContext

    ctx = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": SCHEMA}
    )
    return ctx.get_current_revision()


def upgrade_sql(
    from_revision: str | None, *, repair: bool = False, current_functions: bool = True
) -> str:
    """The SQL that :func:`install` would run on a database at ``from_revision``
    (``current_functions``: whether its functions are this version's)."""
    from alembic import command

    refuse_newer(from_revision)
    buffer = io.StringIO()
    cfg = alembic_config()
    cfg.output_buffer = buffer
    target = "head" if from_revision is None else f"{from_revision}:head"
    if from_revision is not None and from_revision == head_revision():
        if repair or not current_functions:
            return f"BEGIN;\n\n{functions_script()}\nCOMMIT;\n"
        return "-- the audit schema is already at the newest revision; nothing to do\n"
    command.upgrade(cfg, target, sql=True)
    return buffer.getvalue()
