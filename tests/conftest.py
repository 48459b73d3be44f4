"""Shared fixtures: real PostgreSQL servers, one fresh database per test, throwaway roles.

Which servers the tests run against:

* ``PGAUDIT_TEST_DSN`` set: that existing server (superuser DSN), test id ``dsn``.
* else ``PGAUDIT_TEST_VERSIONS`` (e.g. ``15`` or ``15,16``): a throwaway
  :class:`~pgaudit_tool.cluster.TempCluster` per listed major, test ids ``pg15``, ``pg16``;
* else every major that :func:`~pgaudit_tool.cluster.available_installs` finds.

Fixtures:

* ``pg_server`` (session, parametrized over the servers): a :class:`PgServer`.
* ``dsn`` (function): DSN of a brand-new empty database on ``pg_server``, dropped afterwards.
* ``conn`` (function): an autocommit ``psycopg.Connection`` to ``dsn``, closed afterwards.
* ``make_role`` (function): ``make_role(prefix="role", attributes="")`` creates a LOGIN role
  with a unique name and returns the name; every role made is dropped afterwards.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql.janitor import DatabaseJanitor

from pgaudit_tool import Audit
from pgaudit_tool.cluster import PgInstall, TempCluster, available_installs

ENV_DSN = "PGAUDIT_TEST_DSN"
ENV_VERSIONS = "PGAUDIT_TEST_VERSIONS"
# Our clusters write no more WAL than crash recovery needs: CREATE/DROP DATABASE (twice per
# test) take about half the CPU time they take at the default wal_level (replica). No test
# (nor pgaudit_tool) uses replication, logical decoding or archiving.
_TEST_CLUSTER_SETTINGS = {"wal_level": "minimal", "max_wal_senders": "0"}


# --------------------------------------------------------------------------- servers


@dataclass
class PgServer:
    """One PostgreSQL server the suite runs against."""

    id: str  # "pg15", "pg16", ... or "dsn"
    admin_dsn: str = ""  # superuser DSN, database "postgres" (or the one in PGAUDIT_TEST_DSN)
    major: int = 0
    install: PgInstall | None = None  # None for PGAUDIT_TEST_DSN
    cluster: TempCluster | None = field(default=None, repr=False)

    started: bool = False
    _audit_template: str | None = field(default=None, repr=False)

    @property
    def admin_user(self) -> str:
        """The superuser of ``admin_dsn``: "postgres" on our own clusters."""
        return str(conninfo_to_dict(self.admin_dsn).get("user") or "postgres")

    def dsn_for(self, dbname: str, user: str | None = None) -> str:
        """DSN of ``dbname`` as ``user`` (default: the superuser, "postgres" on our clusters).

        Our clusters use trust authentication, so any existing role can log in passwordless.
        """
        return make_conninfo(self.admin_dsn, dbname=dbname, user=user or self.admin_user)

    def janitor(self, dbname: str, template: str | None = None) -> DatabaseJanitor:
        params = conninfo_to_dict(self.admin_dsn)
        return DatabaseJanitor(
            user=self.admin_user,
            password=str(params["password"]) if params.get("password") else None,
            host=str(params.get("host") or params.get("hostaddr") or "localhost"),
            port=str(params.get("port") or 5432),
            dbname=dbname,
            template_dbname=template,
            maintenance_dbname=str(params.get("dbname") or "postgres"),
            connection_timeout=10,
        )

    def audit_template(self) -> str | None:
        """A database with the audit schema installed by the superuser, to copy per test.

        Only on our own clusters (made once per cluster; never on ``PGAUDIT_TEST_DSN``'s
        server).  ``CREATE DATABASE ... TEMPLATE`` copies it in the time an empty database
        takes, and the ``audit`` fixture's ``install()`` then finds it at head: the same
        state as a fresh install (but audit.home, which names the template until the copy's
        first ``enable()`` adopts it: an audit schema with nothing registered has nothing to
        reattach).
        It does not accept connections, so role cleanup and tests never reach it.
        """
        if self.cluster is None:
            return None
        if self._audit_template is None:
            name = "pgaudit_test_template"
            with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                with Audit.connect(self.dsn_for(name)) as handle:
                    handle.install()
                admin.execute(
                    sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                        sql.Identifier(name)
                    )
                )
            self._audit_template = name
        return self._audit_template

    def start(self) -> None:
        """Start the cluster (no-op for an existing server) and learn its major."""
        if self.started:
            return
        if self.install is not None:
            self.cluster = TempCluster(self.install, settings=_TEST_CLUSTER_SETTINGS).start()
            self.admin_dsn = self.cluster.dsn
        with psycopg.connect(self.admin_dsn, connect_timeout=10) as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
        assert row is not None
        self.major = int(row[0]) // 10000
        self.started = True

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        self._audit_template = None
        self.started = False


def _select_servers() -> list[PgServer]:
    """The servers named by the environment; raises pytest.UsageError if there are none."""
    dsn = os.environ.get(ENV_DSN, "").strip()
    if dsn:
        return [PgServer(id="dsn", admin_dsn=dsn)]
    installs = {i.major: i for i in available_installs()}
    wanted = os.environ.get(ENV_VERSIONS, "").strip()
    if wanted:
        try:
            majors = [int(v) for v in re.split(r"[,\s]+", wanted) if v]
        except ValueError:
            raise pytest.UsageError(
                f"{ENV_VERSIONS}={wanted!r}: expected e.g. '15' or '15,16'."
            ) from None
        missing = [m for m in majors if m not in installs]
        if missing:
            raise pytest.UsageError(
                f"{ENV_VERSIONS} asks for PostgreSQL {missing}, but only "
                f"{sorted(installs) or 'none'} are installed."
            )
    else:
        majors = sorted(installs)
    if not majors:
        raise pytest.UsageError(
            "No PostgreSQL server to test against: no installation found (apt-get install "
            f"postgresql, or pip install -e '.[dev]' for pgserver) and {ENV_DSN} is not set."
        )
    return [PgServer(id=f"pg{m}", major=m, install=installs[m]) for m in dict.fromkeys(majors)]


_SERVERS: dict[str, PgServer] = {}


def pytest_configure(config: pytest.Config) -> None:
    if _SERVERS:
        return
    for server in _select_servers():
        _SERVERS[server.id] = server
    chosen = os.environ.get(ENV_DSN, "").strip() or os.environ.get(ENV_VERSIONS, "").strip()
    if not chosen and len(_SERVERS) < 2:
        config.issue_config_time_warning(
            pytest.PytestWarning(
                f"Only one PostgreSQL major is installed ({', '.join(_SERVERS)}): the suite "
                "normally runs against two (system PostgreSQL + pgserver's bundled 16)."
            ),
            stacklevel=2,
        )


def pytest_report_header(config: pytest.Config) -> str:
    parts = []
    for server in _SERVERS.values():
        where = server.install.bindir if server.install else "PGAUDIT_TEST_DSN"
        source = f"{server.install.source} " if server.install else ""
        parts.append(f"{server.id} ({source}{where})")
    return "postgresql servers: " + ", ".join(parts)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Parametrize here rather than in @pytest.fixture(params=...): the list comes from the
    # environment, read in pytest_configure.
    if "pg_server" in metafunc.fixturenames:
        ids = list(_SERVERS)
        if metafunc.definition.get_closest_marker("one_major") is not None:
            ids = ids[-1:]  # the newest major: what the test measures does not depend on it
        metafunc.parametrize("pg_server", ids, ids=ids, indirect=True, scope="session")


@pytest.fixture(scope="session")
def _servers() -> Iterator[dict[str, PgServer]]:
    """All servers; each started on first use, all stopped at the end of the session."""
    yield _SERVERS
    for server in _SERVERS.values():
        server.stop()


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest, _servers: dict[str, PgServer]) -> PgServer:
    """The server under test: ``.dsn_for(dbname, user=None)``, ``.major``, ``.admin_dsn``.

    Started lazily, once per session, whatever order pytest runs the parameters in.
    """
    server = _servers[request.param]
    server.start()
    return server


# --------------------------------------------------------------------------- databases


def _unique_name(prefix: str, hint: str) -> str:
    """A lowercase identifier (< 63 bytes) unique to this call: prefix + hint slug + random."""
    slug = re.sub(r"[^a-z0-9]+", "_", hint.lower()).strip("_")[:30]
    return "_".join(p for p in (prefix[:16], slug, uuid.uuid4().hex[:8]) if p)


def _release_database(server: PgServer, dbname: str) -> None:
    """Remove what would make DROP DATABASE fail besides open sessions (the janitor ends those).

    Logical replication slots, subscriptions and prepared transactions in ``dbname``.
    """
    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
        busy = admin.execute(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = %(d)s)"
            " + (SELECT count(*) FROM pg_prepared_xacts WHERE database = %(d)s)"
            " + (SELECT count(*) FROM pg_subscription s JOIN pg_database d"
            "    ON d.oid = s.subdbid WHERE d.datname = %(d)s)",
            {"d": dbname},
        ).fetchone()
        if not busy or not busy[0]:
            return
        for (slot,) in admin.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (dbname,)
        ).fetchall():
            admin.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE slot_name = %s AND active_pid IS NOT NULL",
                (slot,),
            )
            admin.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    with psycopg.connect(server.dsn_for(dbname), autocommit=True) as db:
        for (gid,) in db.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
        ).fetchall():
            db.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
        for (sub,) in db.execute(
            "SELECT subname FROM pg_subscription WHERE subdbid ="
            " (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall():
            name = sql.Identifier(sub)
            db.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(name))
            db.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(name))
            db.execute(sql.SQL("DROP SUBSCRIPTION {}").format(name))


@contextmanager
def fresh_database(pg_server: PgServer, dbname: str, template: str | None = None) -> Iterator[str]:
    """Create ``dbname`` on ``pg_server``, yield its superuser DSN, and drop it afterwards.

    From ``template`` if given, else from template1.
    """
    janitor = pg_server.janitor(dbname, template)
    janitor.init()
    try:
        yield pg_server.dsn_for(dbname)
    finally:
        _release_database(pg_server, dbname)
        janitor.drop()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that is bound but not listening: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


@pytest.fixture
def dsn(pg_server: PgServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN (superuser) of a brand-new, empty database used by this test only.

    Created from template1 and dropped at teardown even if the test left sessions open,
    replication slots or prepared transactions behind.  When the test uses the ``audit``
    fixture, it is copied instead from :meth:`PgServer.audit_template` (the audit schema
    already installed by the superuser, as ``audit`` would install it).
    """
    template = pg_server.audit_template() if "audit" in request.fixturenames else None
    with fresh_database(pg_server, _unique_name("t", request.node.name), template) as created:
        yield created


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to ``dsn``, closed after the test."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


# --------------------------------------------------------------------------- roles


def _drop_role(server: PgServer, role: str) -> None:
    """Drop ``role`` and everything it owns or was granted, in every database."""
    ident = sql.Identifier(role)
    admin_user = sql.Identifier(server.admin_user)
    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            return
        databases = [
            r[0]
            for r in admin.execute(
                "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname"
            ).fetchall()
        ]
        for (owned,) in admin.execute(
            "SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles"
            " WHERE rolname = %s)",
            (role,),
        ).fetchall():
            admin.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(owned), admin_user)
            )
    for dbname in databases:
        try:
            with psycopg.connect(server.dsn_for(dbname), autocommit=True) as db:
                db.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(ident))
        except psycopg.OperationalError:
            continue  # a database we cannot reach (external server): nothing of ours there
    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))


@pytest.fixture
def make_role(
    pg_server: PgServer, dsn: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., str]]:
    """Factory: ``make_role(prefix="role", attributes="")`` -> name of a new LOGIN role.

    ``attributes`` is extra CREATE ROLE options, e.g. ``"CREATEDB NOINHERIT"``.  The role
    has no password: our clusters use trust auth, so ``pg_server.dsn_for(db, user=name)``
    logs in as it.  At teardown, before the test database is dropped, each role's sessions
    are ended, and in every database its objects and privileges are dropped (DROP OWNED),
    databases it owns are handed to the superuser, then the role is dropped.
    """
    del dsn  # requested only so that it is torn down after the roles
    made: list[str] = []

    def factory(prefix: str = "role", attributes: str = "") -> str:
        name = _unique_name(prefix, request.node.originalname or request.node.name)
        stmt = sql.SQL("CREATE ROLE {} LOGIN " + attributes).format(sql.Identifier(name))
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
            admin.execute(stmt)
        made.append(name)
        return name

    yield factory
    errors = []
    for name in reversed(made):
        try:
            _drop_role(pg_server, name)
        except psycopg.Error as exc:
            errors.append(f"{name}: {exc}")
    assert not errors, f"could not drop test roles: {errors}"


# --------------------------------------------------------------------------- pgaudit_tool


@pytest.fixture
def audit(dsn: str) -> Iterator[Audit]:
    """An :class:`~pgaudit_tool.Audit` on the test database, audit schema installed."""
    with Audit.connect(dsn) as handle:
        handle.install()
        yield handle
