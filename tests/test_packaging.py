"""Packaging: the wheel ships the SQL and migrations and finds them; the install is faithful.

* The wheel (built offline with ``python -m build --no-isolation``) contains
  ``pgaudit_tool/_data/{sql,migrations}``, and a copy installed with ``pip --target`` uses them.
* The editable install (this venv) uses the checkout's ``sql/`` and ``migrations/``.
* ``Audit.install()`` (alembic) creates exactly the catalog that running the SQL files by hand
  creates, apart from alembic's ``audit.schema_version``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

import pgaudit_tool
from pgaudit_tool import Audit
from pgaudit_tool.cli import main
from pgaudit_tool.errors import NotInstalled
from pgaudit_tool.resources import data_dir, function_files, schema_files
from pgaudit_tool.schema import (
    alembic_config,
    functions_current,
    functions_digest,
    functions_script,
    head_revision,
    upgrade_sql,
)
from tests.conftest import PgServer, fresh_database
from tests.released import ORDER as RELEASED
from tests.released import install_released
from tests.test_cli import failed, invoke

REPO = Path(__file__).resolve().parents[1]
# The schema revisions the checkout ships, oldest first, and the newest.
REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009")
HEAD = REVISIONS[-1]


# --------------------------------------------------------------------------- the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from the checkout, offline (no build isolation)."""
    outdir = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(outdir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [built] = outdir.glob("pgaudit_tool-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed (without dependencies) into a folder of its own."""
    target = tmp_path_factory.mktemp("target")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def run_installed(target: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports pgaudit_tool from ``target``."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=target.parent,  # not the checkout: its pgaudit_tool/ must not be importable
        env={**_base_env(), "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_wheel_contains_the_sql_and_the_migrations(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        data = {n: zf.read(n) for n in names if n.startswith("pgaudit_tool/_data/")}
        entry_points = next(zf.read(n) for n in names if n.endswith(".dist-info/entry_points.txt"))
    sql_names = {p.relative_to(REPO).as_posix() for p in (REPO / "sql").glob("*/*.sql")}
    schema_names = {n.split("/")[2][:4] for n in sql_names if n.startswith("sql/schema/")}
    assert schema_names == set(REVISIONS)
    assert any(n.startswith("sql/functions/") for n in sql_names)
    for name in sql_names:
        assert f"pgaudit_tool/_data/{name}" in names
    assert "pgaudit_tool/_data/migrations/env.py" in names
    migrations = {p.name for p in (REPO / "migrations" / "versions").glob("*.py")}
    assert len(migrations) == len(REVISIONS)
    for name in migrations:
        assert f"pgaudit_tool/_data/migrations/versions/{name}" in names
    assert "pgaudit_tool/__init__.py" in names and "pgaudit_tool/cli.py" in names
    assert "pgaudit_tool/py.typed" in names  # type hints for users of the API (PEP 561)
    # Byte for byte what the checkout holds.
    for name, content in data.items():
        source = REPO / name.removeprefix("pgaudit_tool/_data/")
        assert source.read_bytes() == content, f"{name} differs from {source}"
    # No caches, no tests, nothing outside the package and its metadata.
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert {n.split("/", 1)[0] for n in names} == {
        "pgaudit_tool",
        f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info",
    }
    assert re.search(rb"pgaudit-tool\s*=\s*pgaudit_tool\.cli:main", entry_points)


_REPORT = """
import json, pgaudit_tool
from pgaudit_tool.resources import data_dir, function_files, schema_files
from pgaudit_tool.schema import alembic_config, head_revision, upgrade_sql
print(json.dumps({
    "package": pgaudit_tool.__file__,
    "sql": str(data_dir("sql")),
    "migrations": str(data_dir("migrations")),
    "script_location": alembic_config().get_main_option("script_location"),
    "sql_files": [str(p) for p in schema_files() + function_files()],
    "head": head_revision(),
    "upgrade_sql": upgrade_sql(None),
    "upgrade_sql_at_head": upgrade_sql(head_revision()),
}))
"""


def test_installed_wheel_finds_its_data(installed: Path) -> None:
    result = run_installed(installed, _REPORT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    package = installed / "pgaudit_tool"
    assert Path(report["package"]).parent == package
    assert Path(report["sql"]) == package / "_data" / "sql"
    assert Path(report["migrations"]) == package / "_data" / "migrations"
    assert Path(report["script_location"]) == package / "_data" / "migrations"
    assert all(Path(p).is_relative_to(package / "_data" / "sql") for p in report["sql_files"])
    assert [Path(p).name for p in report["sql_files"]] == [
        p.name for p in schema_files() + function_files()
    ]
    assert report["head"] == HEAD == head_revision()
    script = report["upgrade_sql"]
    for fragment in (
        "CREATE SCHEMA IF NOT EXISTS audit",
        "CREATE TABLE audit.schema_version",
        "CREATE TABLE audit.change",
        "CREATE OR REPLACE FUNCTION audit.enable",
        "CREATE OR REPLACE VIEW audit.history",
        "INSERT INTO audit.schema_version (version_num) VALUES ('0001')",
        "ALTER TABLE audit.tracked_table ADD COLUMN layout_check",
        f"UPDATE audit.schema_version SET version_num='{HEAD}'",
    ):
        assert fragment in script
    assert script == upgrade_sql(None)  # what the checkout renders
    assert "nothing to do" in report["upgrade_sql_at_head"]


def test_installed_wheel_cli_runs(installed: Path) -> None:
    result = run_installed(
        installed,
        "import sys; from pgaudit_tool.cli import main; main(prog_name='pgaudit-tool')",
        "--help",
    )
    assert result.returncode == 0, result.stderr
    for command in ("install", "enable", "disable", "refresh", "status", "history", "demo"):
        assert f"  {command} " in result.stdout


def test_installed_wheel_installs_the_schema(installed: Path, dsn: str) -> None:
    code = (
        "import sys; from pgaudit_tool import Audit\n"
        "with Audit.connect(sys.argv[1]) as audit:\n"
        "    r = audit.install(); print(r.before, r.after, audit.installed_revision())\n"
    )
    result = run_installed(installed, code, dsn)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", HEAD, HEAD]
    with Audit.connect(dsn) as audit:
        assert audit.install().changed is False  # the checkout agrees it is at head


# --------------------------------------------------------------------------- editable install


def test_editable_install_uses_the_checkout() -> None:
    assert Path(pgaudit_tool.__file__).resolve().parent == REPO / "pgaudit_tool"
    assert data_dir("sql") == REPO / "sql"
    assert data_dir("migrations") == REPO / "migrations"
    assert Path(str(alembic_config().get_main_option("script_location"))) == REPO / "migrations"
    assert [p.relative_to(REPO).as_posix()[:15] for p in schema_files()] == [
        f"sql/schema/{revision}" for revision in REVISIONS
    ]
    assert {p.parent for p in function_files()} == {REPO / "sql" / "functions"}


# --------------------------------------------------------------------------- catalog equivalence

# Every object of the audit schema, as the server describes it; alembic's version table aside.
_NOT_VERSION = "NOT IN ('schema_version', 'schema_version_pkc', '_schema_version')"
_CATALOG: dict[str, str] = {
    "schema": """
        SELECT n.nspname, pg_get_userbyid(n.nspowner),
               (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(n.nspacl) AS a)::text,
               obj_description(n.oid, 'pg_namespace')
          FROM pg_namespace n WHERE n.nspname = 'audit'""",
    "relations": f"""
        SELECT c.relname, c.relkind, c.relpersistence, c.reloptions::text,
               (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(c.relacl) AS a)::text,
               pg_get_userbyid(c.relowner), obj_description(c.oid, 'pg_class'),
               c.relreplident, c.relrowsecurity
          FROM pg_class c
         WHERE c.relnamespace = 'audit'::regnamespace AND c.relname {_NOT_VERSION}
         ORDER BY 1""",
    "columns": f"""
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, a.attidentity, a.attgenerated, pg_get_expr(d.adbin, d.adrelid),
               col_description(c.oid, a.attnum), a.attacl::text, a.attcollation
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace = 'audit'::regnamespace AND c.relname {_NOT_VERSION}
           AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY 1, 2""",
    "constraints": f"""
        SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid),
               obj_description(oid, 'pg_constraint')
          FROM pg_constraint
         WHERE connamespace = 'audit'::regnamespace AND conname {_NOT_VERSION}
           -- PostgreSQL >= 18 records NOT NULL as constraints too: the version table's
           -- (alembic's own, which only an alembic install has) is not part of the schema.
           AND conrelid::regclass::text <> 'audit.schema_version'
         ORDER BY 1, 2""",
    "indexes": f"""
        SELECT c.relname, pg_get_indexdef(i.indexrelid)
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relnamespace = 'audit'::regnamespace AND c.relname {_NOT_VERSION}
         ORDER BY 1""",
    "sequences": """
        SELECT seqrelid::regclass::text, seqtypid::regtype::text, seqstart, seqincrement,
               seqmax, seqmin, seqcache, seqcycle
          FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
         WHERE c.relnamespace = 'audit'::regnamespace
         ORDER BY 1""",
    "functions": """
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid),
               (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(p.proacl) AS a)::text,
               pg_get_userbyid(p.proowner), obj_description(p.oid, 'pg_proc'),
               p.prosecdef, p.proconfig::text, p.provolatile, p.proparallel
          FROM pg_proc p WHERE p.pronamespace = 'audit'::regnamespace
         ORDER BY 1""",
    "views": """
        SELECT c.relname, pg_get_viewdef(c.oid, true)
          FROM pg_class c
         WHERE c.relnamespace = 'audit'::regnamespace AND c.relkind IN ('v', 'm')
         ORDER BY 1""",
    "types": f"""
        SELECT t.typname, t.typtype, pg_get_userbyid(t.typowner), t.typacl::text
          FROM pg_type t
         WHERE t.typnamespace = 'audit'::regnamespace AND t.typname {_NOT_VERSION}
         ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(t.oid)
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = 'audit'::regnamespace
         ORDER BY 1, 2""",
    "policies": """
        SELECT polrelid::regclass::text, polname, pg_get_expr(polqual, polrelid)
          FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
         WHERE c.relnamespace = 'audit'::regnamespace
         ORDER BY 1, 2""",
    # Objects an install could create outside the schema.
    "event_triggers": "SELECT evtname, evtevent, evtfoid::regproc::text, evttags, evtenabled"
    " FROM pg_event_trigger ORDER BY 1",
    "extensions": "SELECT extname, extversion FROM pg_extension ORDER BY 1",
    "default_acl": "SELECT defaclrole::regrole::text, defaclobjtype, defaclacl::text"
    " FROM pg_default_acl ORDER BY 1, 2",
}


def _catalog(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {name: conn.execute(query).fetchall() for name, query in _CATALOG.items()}


@pytest.fixture
def hand_dsn(pg_server: PgServer) -> Iterator[str]:
    """A second fresh database, for the hand-run install."""
    with fresh_database(pg_server, f"t_hand_install_{uuid.uuid4().hex[:8]}") as created:
        yield created


def _install_by_hand(dsn: str) -> None:
    """The SQL files run in order, then the comment recording the functions' digest."""
    with psycopg.connect(dsn) as conn:  # one transaction, committed on exit
        conn.execute("CREATE SCHEMA audit")
        for path in schema_files():
            conn.execute(path.read_text(encoding="utf-8"))  # type: ignore[arg-type]
        conn.execute(functions_script())  # type: ignore[arg-type]


def _pg_dump(pg_server: PgServer, dsn: str) -> str | None:
    """``pg_dump --schema-only`` of the audit schema, or None without a matching pg_dump."""
    if pg_server.install is None:
        return None
    pg_dump = pg_server.install.binary("pg_dump")
    if not pg_dump.is_file():
        return None
    result = subprocess.run(
        [
            str(pg_dump),
            "--schema-only",
            "--schema=audit",
            "--exclude-table=audit.schema_version",
            "--no-tablespaces",
            "--dbname",
            dsn,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # pg_dump >= 15.14/16.10 brackets the dump with \restrict <random key>.
    lines = [
        ln for ln in result.stdout.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict"))
    ]
    return "\n".join(lines)


def test_alembic_install_equals_hand_run_sql(pg_server: PgServer, dsn: str, hand_dsn: str) -> None:
    with Audit.connect(dsn) as audit:
        assert audit.install().after == HEAD
    _install_by_hand(hand_dsn)

    via_alembic, by_hand = _catalog(dsn), _catalog(hand_dsn)
    assert via_alembic["relations"], "the catalog query found nothing"
    assert len(via_alembic["functions"]) > 10
    for name in _CATALOG:
        assert via_alembic[name] == by_hand[name], f"{name} differ"

    dumped = _pg_dump(pg_server, dsn)
    if dumped is not None:
        assert "CREATE TABLE audit.change" in dumped
        assert "schema_version" not in dumped
        assert dumped == _pg_dump(pg_server, hand_dsn)


@pytest.mark.parametrize("released", RELEASED)
def test_upgraded_equals_installed(
    pg_server: PgServer, dsn: str, hand_dsn: str, released: str
) -> None:
    """A database that an earlier release installed, upgraded, has exactly the catalog of a
    fresh install: the functions are re-applied whole, whatever revision it came from."""
    with Audit.connect(dsn) as audit:
        audit.install()
    install_released(hand_dsn, released)
    with Audit.connect(hand_dsn) as audit:
        assert (audit.install().before, audit.installed_revision()) == (released, HEAD)
    fresh, upgraded = _catalog(dsn), _catalog(hand_dsn)
    for name in _CATALOG:
        assert fresh[name] == upgraded[name], f"{name} differ"
    dumped = _pg_dump(pg_server, dsn)
    if dumped is not None:
        assert dumped == _pg_dump(pg_server, hand_dsn)


def test_repair_restores_what_was_dropped_or_edited(
    pg_server: PgServer, dsn: str, hand_dsn: str
) -> None:
    """At the newest revision, ``install`` changes nothing; ``install(repair=True)`` re-applies
    the functions, views and triggers: the catalog is again that of a fresh install."""
    with Audit.connect(dsn) as audit:
        audit.install()
    with Audit.connect(hand_dsn) as audit:
        audit.install()
        audit.conn.execute(
            "DROP FUNCTION audit.unsealed();"
            "DROP VIEW audit.history_columns;"
            "CREATE OR REPLACE FUNCTION audit._context(p_raw text) RETURNS jsonb"
            " LANGUAGE sql IMMUTABLE AS 'SELECT NULL::jsonb';"
            "ALTER TABLE audit.transaction_default DISABLE TRIGGER mark_commit;"
            "DROP EVENT TRIGGER pgaudit_guard_drop;"
        )
        assert audit.install().changed is False
        assert _catalog(hand_dsn) != _catalog(dsn)
        script = audit.install_sql(repair=True)
        assert "CREATE OR REPLACE FUNCTION audit.unsealed()" in script
        assert _catalog(hand_dsn) != _catalog(dsn)  # the dry run changed nothing
        audit.install(repair=True)
    fresh, repaired = _catalog(dsn), _catalog(hand_dsn)
    for name in _CATALOG:
        assert fresh[name] == repaired[name], f"{name} differ"


@pytest.mark.one_major  # test_upgraded_equals_installed[0009] upgrades on every major
def test_functions_of_another_version_at_the_same_revision_are_replaced(
    pg_server: PgServer, dsn: str, hand_dsn: str
) -> None:
    """A database at the newest revision whose functions an earlier release applied (release
    2bf1e07, revision 0009, whose guard and doctor called audit._inheritance() without
    arguments): doctor says so, ``install`` (no ``repair``) re-applies this version's functions,
    retires the old signature, and the catalog is that of a fresh install; then it is current.
    Fails when install does nothing at the newest revision."""
    with Audit.connect(dsn) as audit:
        audit.install()
    install_released(hand_dsn, "0009")
    with Audit.connect(hand_dsn) as audit:
        assert audit.installed_revision() == HEAD
        assert not functions_current(audit.conn)
        [stale] = [f for f in audit.doctor() if f["object"] == "schema audit"]
        assert "not those of this version" in stale["problem"]
        script = audit.install_sql()
        assert "CREATE OR REPLACE FUNCTION audit._inheritance(p_tables oid[]" in script
        assert functions_digest() in script
        assert not functions_current(audit.conn)  # the dry run changed nothing
        audit.conn.rollback()
    result = CliRunner().invoke(main, ["--dsn", hand_dsn, "install"])
    assert result.exit_code == 0, result.output
    assert "re-applied the functions, views and triggers of revision" in result.output
    assert "another version of pgaudit_tool had applied them" in result.output
    with Audit.connect(hand_dsn) as audit:
        assert functions_current(audit.conn)
        assert not [f for f in audit.doctor() if f["object"] == "schema audit"]
        again = audit.install()
        assert (again.before, again.after, again.refreshed, again.changed) == (
            HEAD,
            HEAD,
            False,
            False,
        )
        # The release's audit._inheritance() is gone: one function of that name is left.
        assert audit.conn.execute(
            "SELECT array_agg(oid::regprocedure::text) FROM pg_proc"
            " WHERE proname = '_inheritance' AND pronamespace = 'audit'::regnamespace"
        ).fetchone() == (["audit._inheritance(oid[])"],)
    fresh, replaced = _catalog(dsn), _catalog(hand_dsn)
    for name in _CATALOG:
        assert fresh[name] == replaced[name], f"{name} differ"


@pytest.mark.one_major  # install's logic; installs and upgrades run on every major
@pytest.mark.parametrize(("version", "replaced"), [("0.0.9", True), ("99.0.0", False)])
def test_functions_of_a_newer_version_are_not_replaced_unasked(
    dsn: str, version: str, replaced: bool
) -> None:
    """Functions recorded as applied by an older version of the tool are replaced by
    ``install``; by a newer one (two administrators with different versions), ``install``
    refuses and changes nothing (its functions may fix what this version gets wrong), doctor
    says so, and ``install --repair`` replaces them when asked."""
    with Audit.connect(dsn) as audit:
        audit.install()
        audit.conn.execute(
            "CREATE OR REPLACE FUNCTION audit._context(p_raw text) RETURNS jsonb"
            " LANGUAGE sql IMMUTABLE AS 'SELECT NULL::jsonb'"
        )
        audit.conn.execute(
            sql.SQL("COMMENT ON SCHEMA audit IS {}").format(
                sql.Literal(f"functions of pgaudit_tool {version}, sha256 {'0' * 64}")
            )
        )
        audit.conn.commit()
        edited = _catalog(dsn)["functions"]
        assert [f for f in audit.doctor() if f["object"] == "schema audit"]
        if replaced:
            assert audit.install().refreshed
            assert _catalog(dsn)["functions"] != edited and functions_current(audit.conn)
            return
        with pytest.raises(NotInstalled, match=f"applied by pgaudit_tool {version}, newer"):
            audit.install()
        audit.conn.rollback()
        assert _catalog(dsn)["functions"] == edited
        failed(invoke(dsn, "install"), 4, "newer than this one", "--repair")
        assert audit.install(repair=True).refreshed and functions_current(audit.conn)


def test_a_revision_made_from_the_template_installs(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`alembic revision` with the packaged template makes a migration that runs its SQL file,
    sql/schema/<rev>_<name>.sql, as the shipped ones do."""
    import shutil

    from alembic import command

    from pgaudit_tool import resources, schema

    for name in ("sql", "migrations"):
        shutil.copytree(data_dir(name), tmp_path / name)
    monkeypatch.setattr(resources, "data_dir", lambda name: tmp_path / name)
    monkeypatch.setattr(schema, "data_dir", lambda name: tmp_path / name)
    command.revision(schema.alembic_config(), message="probe", rev_id="9999")
    made = tmp_path / "migrations" / "versions" / "9999_probe.py"
    assert "run_sql_revision('9999')" in made.read_text(encoding="utf-8")
    (tmp_path / "sql" / "schema" / "9999_probe.sql").write_text(
        "CREATE TABLE audit.probe (id int);\n", encoding="utf-8"
    )
    assert schema.head_revision() == "9999"
    with Audit.connect(dsn) as audit:
        result = audit.install()
        assert (result.before, result.after) == (None, "9999")
        assert audit.conn.execute("SELECT to_regclass('audit.probe')::text").fetchone() == (
            "audit.probe",
        )
