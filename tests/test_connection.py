"""Tests of pgaudit_tool.connection: precedence, URI normalisation, safe error messages.

No database is needed: failures are provoked against a local port that accepts nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pgaudit_tool.connection import (
    LIBPQ_ENV_VARS,
    connect,
    normalize_uri,
    redact,
    resolve_conninfo,
    sqlalchemy_engine,
)
from pgaudit_tool.errors import AuditError, ConnectionFailed

SECRET = "s3cr3t-Pa55"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    """Remove every libpq variable and DATABASE_URL from the process environment."""
    for name in [*LIBPQ_ENV_VARS, "DATABASE_URL"]:
        monkeypatch.delenv(name, raising=False)
    # Keep a developer's ~/.pgpass and service file out of the tests.
    monkeypatch.setenv("PGPASSFILE", os.path.join(tmp_path, "no-pgpass"))
    monkeypatch.setenv("PGSERVICEFILE", os.path.join(tmp_path, "no-service"))


# --------------------------------------------------------------------------- precedence


def test_dsn_wins_over_everything() -> None:
    env = {"PGHOST": "envhost", "DATABASE_URL": "postgresql://urlhost/db"}
    assert resolve_conninfo("host=dsnhost dbname=x", env) == "host=dsnhost dbname=x"
    assert resolve_conninfo("postgresql://u@h/db", env) == "postgresql://u@h/db"


@pytest.mark.parametrize(
    "var",
    [
        *("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"),
        *("PGPASSWORD", "PGOPTIONS", "PGSSLMODE", "PGAPPNAME", "PGPASSFILE", "PGCONNECT_TIMEOUT"),
    ],
)
def test_libpq_variable_defers_to_libpq(var: str) -> None:
    env = {var: "x", "DATABASE_URL": "postgresql://urlhost/db"}
    assert resolve_conninfo(None, env) == ""


def test_database_url_used_without_libpq_variables() -> None:
    env = {"DATABASE_URL": "postgresql://u@urlhost:5433/db", "HOME": "/root", "PGTZ": "UTC"}
    assert resolve_conninfo(None, env) == "postgresql://u@urlhost:5433/db"


def test_empty_values_count_as_unset() -> None:
    env = {"PGHOST": "", "PGUSER": "", "DATABASE_URL": "postgresql://urlhost/db"}
    assert resolve_conninfo("", env) == "postgresql://urlhost/db"
    assert resolve_conninfo(None, {"DATABASE_URL": ""}) == ""


def test_database_url_is_normalised() -> None:
    env = {"DATABASE_URL": "postgresql+psycopg2://u:p@h/db"}
    assert resolve_conninfo(None, env) == "postgresql://u:p@h/db"


def test_nothing_set_means_libpq_defaults() -> None:
    assert resolve_conninfo(None, {}) == ""


def test_defaults_to_process_environment(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    monkeypatch.delenv("PGPASSFILE")
    monkeypatch.delenv("PGSERVICEFILE")
    monkeypatch.setenv("DATABASE_URL", "postgres+asyncpg://h/db")
    assert resolve_conninfo(None) == "postgresql://h/db"
    monkeypatch.setenv("PGHOST", "h2")
    assert resolve_conninfo(None) == ""


def _parts(conninfo: str) -> dict[str, Any]:
    return conninfo_to_dict(conninfo)


@pytest.mark.parametrize(
    ("dsn", "env"),
    [
        ("host=dsnhost port=1 dbname=x user=u", {}),
        ("postgresql://u@dsnhost:1/x", {"PGHOST": "envhost"}),
        (None, {"DATABASE_URL": "postgresql://u@dsnhost:1/x"}),
    ],
)
def test_parameters_override_the_connection_string(dsn: str | None, env: dict[str, str]) -> None:
    """psql's -h/-p/-U/-d override the same parameters of --dsn or DATABASE_URL and keep the
    others."""
    got = _parts(resolve_conninfo(dsn, env, {"host": "/tmp/sock", "dbname": "shop", "port": None}))
    assert got == {"host": "/tmp/sock", "port": "1", "dbname": "shop", "user": "u"}


def test_parameters_leave_the_rest_to_libpq_variables() -> None:
    """With PG* variables set, the parameters are all the conninfo says: libpq fills the rest."""
    env = {"PGPORT": "5433", "DATABASE_URL": "postgresql://urlhost/db"}
    assert _parts(resolve_conninfo(None, env, {"user": "bob"})) == {"user": "bob"}
    assert resolve_conninfo(None, env, {"user": None, "host": ""}) == ""


@pytest.mark.parametrize(
    "dbname", ["host=h2 dbname=db2", "postgresql://h2/db2", "postgresql+psycopg://h2/db2"]
)
def test_a_connection_string_as_dbname_takes_the_place_of_the_dsn(dbname: str) -> None:
    env = {"DATABASE_URL": "postgresql://urlhost/other"}
    got = _parts(resolve_conninfo(None, env, {"dbname": dbname, "user": "u"}))
    assert got == {"host": "h2", "dbname": "db2", "user": "u"}
    with pytest.raises(AuditError, match="two connection strings"):
        resolve_conninfo("host=h1", {}, {"dbname": dbname})


def test_libpq_names_the_variables() -> None:
    """The variables that count are the ones this libpq reads, from libpq itself."""
    from psycopg import pq

    assert {o.envvar.decode() for o in pq.Conninfo.get_defaults() if o.envvar} == LIBPQ_ENV_VARS
    assert {"PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE"} <= LIBPQ_ENV_VARS
    assert not {"PGTZ", "PGDATESTYLE", "DATABASE_URL"} & LIBPQ_ENV_VARS


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            "postgresql+psycopg://u:p@h:5432/db?sslmode=require",
            "postgresql://u:p@h:5432/db?sslmode=require",
        ),
        ("postgresql+psycopg2://h/db", "postgresql://h/db"),
        ("postgres+psycopg://h/db", "postgresql://h/db"),
        ("postgres+pg8000://h", "postgresql://h"),
        ("PostgreSQL+Psycopg://h/db", "postgresql://h/db"),
        ("postgresql://h/db", "postgresql://h/db"),
        ("postgres://h/db", "postgres://h/db"),
        ("host=h dbname=db", "host=h dbname=db"),
        ("dbname=postgresql+psycopg://x", "dbname=postgresql+psycopg://x"),
    ],
)
def test_normalize_uri(given: str, expected: str) -> None:
    assert normalize_uri(given) == expected
    assert resolve_conninfo(given, {}) == expected


def test_normalised_uri_is_accepted_by_libpq() -> None:
    conninfo = resolve_conninfo("postgresql+psycopg://bob:pw@db.example:6543/app", {})
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    assert params == {
        "user": "bob",
        "password": "pw",
        "host": "db.example",
        "port": "6543",
        "dbname": "app",
    }


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    "text",
    [
        f"host=h password={SECRET} user=u",
        f"host=h password = '{SECRET} with space' user=u",
        f"postgresql://bob:{SECRET}@h/db",
        f"postgresql://h/db?password={SECRET}&sslmode=require",
        f"sslpassword={SECRET}",
        f"error near {SECRET}",
    ],
)
def test_redact(text: str) -> None:
    redacted = redact(text, [SECRET])
    assert SECRET not in redacted
    assert "***" in redacted


def test_redact_keeps_the_rest() -> None:
    assert redact("postgresql://bob:pw@h:5/db") == "postgresql://bob:***@h:5/db"
    assert redact("host=h password=pw port=5") == "host=h password=*** port=5"
    assert redact("connection refused") == "connection refused"


# --------------------------------------------------------------------------- connect


def assert_safe_failure(exc: ConnectionFailed, *secrets: str) -> None:
    """The error is ours, one sentence, secret-free, and tells the user what to do."""
    assert isinstance(exc, AuditError)
    assert not isinstance(exc, psycopg.Error)
    assert exc.exit_code == 3
    for secret in secrets:
        assert secret not in str(exc)
        assert secret not in repr(exc)
    assert "\n" not in exc.message
    assert exc.message.endswith(".")
    assert exc.hint is not None
    for word in ("--dsn", "PG", "DATABASE_URL"):
        assert word in exc.hint


@pytest.mark.parametrize("style", ["keyvalue", "uri", "sqlalchemy"])
def test_connect_refused_raises_connection_failed_without_password(
    style: str, closed_port: int, clean_env: None
) -> None:
    dsn = {
        "keyvalue": f"host=127.0.0.1 port={closed_port} user=bob password={SECRET} dbname=x",
        "uri": f"postgresql://bob:{SECRET}@127.0.0.1:{closed_port}/x",
        "sqlalchemy": f"postgresql+psycopg://bob:{SECRET}@127.0.0.1:{closed_port}/x",
    }[style]
    with pytest.raises(ConnectionFailed) as info:
        connect(dsn)
    assert_safe_failure(info.value, SECRET)
    assert info.value.__cause__ is None
    assert "refused" in info.value.message.lower()
    assert str(closed_port) in info.value.message


def test_refusal_message_is_one_sentence(closed_port: int, clean_env: None) -> None:
    with pytest.raises(ConnectionFailed) as info:
        connect(f"host=127.0.0.1 port={closed_port}")
    assert info.value.message == (
        "Could not connect to the database: connection to server at "
        f'"127.0.0.1", port {closed_port} failed: Connection refused.'
    )


def test_multi_host_failure_lists_each_attempt(closed_port: int, clean_env: None) -> None:
    dsn = f"host=127.0.0.1,127.0.0.1 port={closed_port},{closed_port} password={SECRET}"
    with pytest.raises(ConnectionFailed) as info:
        connect(dsn)
    assert_safe_failure(info.value, SECRET)
    assert info.value.message.count("Connection refused") == 2
    assert "Is the server running" not in info.value.message


def test_connect_through_environment_hides_pgpassword(
    monkeypatch: pytest.MonkeyPatch, closed_port: int, clean_env: None
) -> None:
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", str(closed_port))
    monkeypatch.setenv("PGPASSWORD", SECRET)
    with pytest.raises(ConnectionFailed) as info:
        connect(None)
    assert_safe_failure(info.value, SECRET)


def test_connect_through_database_url(
    monkeypatch: pytest.MonkeyPatch, closed_port: int, clean_env: None
) -> None:
    monkeypatch.delenv("PGPASSFILE")
    monkeypatch.delenv("PGSERVICEFILE")
    monkeypatch.setenv(
        "DATABASE_URL", f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:{closed_port}/d"
    )
    with pytest.raises(ConnectionFailed) as info:
        connect(None)
    assert_safe_failure(info.value, SECRET)
    assert str(closed_port) in info.value.message


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=127.0.0.1 password=x {SECRET}",
        f"postgresql://bob:{SECRET}@[::1/db",
        f"host=127.0.0.1 password={SECRET} nosuchoption=1",
    ],
)
def test_malformed_dsn_raises_connection_failed_without_password(dsn: str, clean_env: None) -> None:
    with pytest.raises(ConnectionFailed) as info:
        connect(dsn)
    assert_safe_failure(info.value, SECRET)
    assert info.value.message.startswith("Invalid connection string")


def test_malformed_dsn_without_password_keeps_details(clean_env: None) -> None:
    with pytest.raises(ConnectionFailed) as info:
        connect("host=127.0.0.1 nosuchoption=1")
    assert '"nosuchoption"' in info.value.message


# --------------------------------------------------------------------------- sqlalchemy


def test_sqlalchemy_engine_keeps_password_out_of_url() -> None:
    engine = sqlalchemy_engine(f"postgresql://bob:{SECRET}@127.0.0.1:1/x")
    try:
        assert SECRET not in repr(engine)
        assert SECRET not in str(engine.url)
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def test_sqlalchemy_engine_connects_with_the_conninfo(closed_port: int, clean_env: None) -> None:
    import sqlalchemy

    engine = sqlalchemy_engine(f"host=127.0.0.1 port={closed_port} user=u password={SECRET}")
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError) as info, engine.connect():
            pass
        assert str(closed_port) in str(info.value)
        assert SECRET not in str(info.value)
    finally:
        engine.dispose()


def test_sqlalchemy_engine_rejects_malformed_conninfo() -> None:
    with pytest.raises(ConnectionFailed) as info:
        sqlalchemy_engine(f"password=x {SECRET}")
    assert_safe_failure(info.value, SECRET)


def test_importing_connection_does_not_import_sqlalchemy() -> None:
    code = "import sys, pgaudit_tool.connection; print('sqlalchemy' in sys.modules)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert result.stdout.strip() == "False"
