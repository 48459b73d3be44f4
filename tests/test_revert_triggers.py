"""Revert through application triggers (issue 15).

A Pagila-like table whose triggers stamp ``last_update``, rebuild a tsvector and write to a log
table: by default a revert switches them off, so rows come back exactly as recorded (the state
at the instant before the incident, from ``table_at``), the log table gets nothing, and every
trigger is left as it was (enabled, ALWAYS, REPLICA, disabled), also when the revert fails.
``fire_triggers`` lets them fire. Only the table's owner may switch triggers: anyone else is
told so before anything runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from pgaudit_tool import Audit
from pgaudit_tool.cli import main
from pgaudit_tool.errors import AuditError, LockTimeout, PermissionDenied
from tests.conftest import PgServer

Conn = psycopg.Connection[Any]

SCHEMA = """
CREATE TABLE film (
    film_id     int PRIMARY KEY,
    title       text NOT NULL,
    rating      text,
    last_update timestamptz NOT NULL DEFAULT now(),
    fulltext    tsvector);
CREATE TABLE film_log (id serial PRIMARY KEY, film_id int, op text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS
    $$BEGIN NEW.last_update := clock_timestamp(); RETURN NEW; END$$;
CREATE FUNCTION index_title() RETURNS trigger LANGUAGE plpgsql AS
    $$BEGIN NEW.fulltext := to_tsvector('simple', NEW.title || ' ' || clock_timestamp()); RETURN NEW; END$$;
CREATE FUNCTION log_film() RETURNS trigger LANGUAGE plpgsql AS
    $$BEGIN INSERT INTO public.film_log (film_id, op) VALUES (coalesce(NEW.film_id, OLD.film_id), TG_OP);
            RETURN NULL; END$$;
CREATE FUNCTION no_deletes() RETURNS trigger LANGUAGE plpgsql AS
    $$BEGIN RAISE EXCEPTION 'films are never deleted'; END$$;
CREATE FUNCTION count_statements() RETURNS trigger LANGUAGE plpgsql AS
    $$BEGIN INSERT INTO film_log (op) VALUES ('statement ' || TG_OP); RETURN NULL; END$$
    SET search_path = public;
CREATE TRIGGER last_updated BEFORE INSERT OR UPDATE ON film FOR EACH ROW EXECUTE FUNCTION stamp();
CREATE TRIGGER "film Fulltext" BEFORE INSERT OR UPDATE ON film FOR EACH ROW EXECUTE FUNCTION index_title();
CREATE TRIGGER film_log AFTER INSERT OR UPDATE OR DELETE ON film FOR EACH ROW EXECUTE FUNCTION log_film();
CREATE TRIGGER statements AFTER INSERT OR UPDATE OR DELETE ON film FOR EACH STATEMENT
    EXECUTE FUNCTION count_statements();
CREATE TRIGGER replica_only AFTER INSERT ON film FOR EACH ROW EXECUTE FUNCTION log_film();
CREATE TRIGGER switched_off BEFORE INSERT ON film FOR EACH ROW EXECUTE FUNCTION no_deletes();
ALTER TABLE film ENABLE ALWAYS TRIGGER film_log;
ALTER TABLE film ENABLE REPLICA TRIGGER replica_only;
ALTER TABLE film DISABLE TRIGGER switched_off;
INSERT INTO film (film_id, title, rating) SELECT g, 'film ' || g, 'G' FROM generate_series(1, 6) AS g;
"""

TRIGGERS_SQL = """
SELECT t.tgrelid::regclass::text, t.tgname, t.tgenabled FROM pg_trigger AS t
 WHERE t.tgrelid IN ('film'::regclass, 'film_log'::regclass) AND NOT t.tgisinternal
 ORDER BY 1, 2
"""


def query(conn: Conn, text: str, params: Any = None) -> list[tuple[Any, ...]]:
    return conn.execute(text, params).fetchall()


def instant(conn: Conn) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


class Film:
    """The audited film table after an incident by mallory, and the state before it."""

    def __init__(self, audit: Audit) -> None:
        self.audit = audit
        self.conn = audit.conn
        self.conn.execute(SCHEMA)
        audit.enable("film")
        self.triggers = query(self.conn, TRIGGERS_SQL)
        self.before = instant(self.conn)
        self.expected = self.state_at(self.before)
        with self.conn.transaction():
            self.conn.execute("SELECT audit.set_actor('mallory')")
            self.conn.execute("UPDATE film SET title = 'hacked', rating = NULL WHERE film_id <= 3")
            self.conn.execute("DELETE FROM film WHERE film_id = 6")
            self.conn.execute("INSERT INTO film (film_id, title) VALUES (7, 'spam')")
        self.log_rows = self.count_log()

    def state_at(self, at: datetime) -> list[tuple[Any, ...]]:
        return [
            tuple(r.values())
            for r in sorted(self.audit.table_at("film", at), key=lambda r: int(r["film_id"]))
        ]

    def live(self) -> list[tuple[Any, ...]]:
        return query(self.conn, "SELECT * FROM film ORDER BY film_id")

    def count_log(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM film_log").fetchone()
        assert row is not None
        return int(row[0])

    def assert_untouched(self) -> None:
        """The triggers exactly as they were, and the table still mallory's."""
        assert query(self.conn, TRIGGERS_SQL) == self.triggers
        assert [r[1] for r in self.live()[:3]] == ["hacked"] * 3


@pytest.fixture
def film(audit: Audit) -> Film:
    return Film(audit)


def test_revert_is_exact_through_triggers_that_rewrite_columns_and_write_elsewhere(
    film: Film,
) -> None:
    result = film.audit.revert(actor="mallory", since=film.before)
    assert {(t["table"], t["trigger"]) for t in result.suppressed_triggers} == {
        ("public.film", "last_updated"),
        ("public.film", "film Fulltext"),
        ("public.film", "film_log"),
        ("public.film", "statements"),
        ("public.film", "replica_only"),
    }  # not switched_off (already off), not pgaudit_tool's capture
    assert film.live() == film.expected  # last_update and fulltext as recorded, to the µs
    assert film.count_log() == film.log_rows  # the log table got nothing from the revert
    assert query(film.conn, TRIGGERS_SQL) == film.triggers  # O, A, R and D as they were
    # The revert itself is captured (capture never switched off), and the triggers fire again.
    assert {c["op"] for c in film.audit.history(txid=result.txid)} == {"UPDATE", "INSERT", "DELETE"}
    film.conn.execute("UPDATE film SET title = 'after' WHERE film_id = 1")
    assert film.count_log() == film.log_rows + 2  # row and statement triggers
    assert film.live()[0][3] > film.expected[0][3]


def test_fire_triggers_lets_them_fire(film: Film) -> None:
    result = film.audit.revert(actor="mallory", since=film.before, fire_triggers=True)
    assert result.suppressed_triggers == []
    assert "DISABLE TRIGGER" not in result.sql
    live = film.live()
    assert [r[:3] for r in live] == [r[:3] for r in film.expected]  # the recorded columns
    assert all(a[3] > e[3] for a, e in zip(live[:3], film.expected[:3], strict=True))  # stamped
    assert film.count_log() > film.log_rows
    assert query(film.conn, TRIGGERS_SQL) == film.triggers


def test_a_trigger_that_raises_is_switched_off_unless_told_to_fire(film: Film) -> None:
    film.conn.execute(
        "CREATE TRIGGER no_deletes BEFORE DELETE ON film FOR EACH ROW EXECUTE FUNCTION no_deletes()"
    )
    film.triggers = query(film.conn, TRIGGERS_SQL)
    with pytest.raises(AuditError, match="the revert failed and changed nothing: .*never deleted"):
        film.audit.revert(actor="mallory", since=film.before, fire_triggers=True)
    film.assert_untouched()
    film.audit.revert(actor="mallory", since=film.before)  # deletes film 7 with it off
    assert film.live() == film.expected
    assert query(film.conn, TRIGGERS_SQL) == film.triggers


def test_a_failing_revert_leaves_every_trigger_as_it_was(film: Film) -> None:
    # A check added since the incident: the UPDATE of the revert fails after the switch.
    film.conn.execute("ALTER TABLE film ADD CONSTRAINT rated CHECK (rating IS NULL) NOT VALID")
    with pytest.raises(AuditError, match="changed nothing: .*rated"):
        film.audit.revert(actor="mallory", since=film.before)
    film.assert_untouched()


def test_a_killed_revert_leaves_every_trigger_as_it_was(
    film: Film, pg_server: PgServer, dsn: str
) -> None:
    """The revert's session is terminated between the switch and its data statements."""
    pid_row = film.conn.execute("SELECT pg_backend_pid()").fetchone()
    assert pid_row is not None

    def kill(done: int, total: int, label: str) -> None:
        if label.startswith(("DELETE", "UPDATE", "INSERT")):
            with psycopg.connect(dsn, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", [pid_row[0]])

    with pytest.raises(AuditError):
        film.audit.revert(actor="mallory", since=film.before, progress=kill)
    with psycopg.connect(dsn, autocommit=True) as after:
        assert query(after, TRIGGERS_SQL) == film.triggers
        assert [r[1] for r in query(after, "SELECT * FROM film ORDER BY 1")[:3]] == ["hacked"] * 3


def test_nobody_else_sees_the_triggers_off_and_writers_wait(film: Film, dsn: str) -> None:
    """While the revert writes, other sessions see the catalog as it was and cannot write."""
    seen: dict[str, Any] = {}

    def look(done: int, total: int, label: str) -> None:
        if label.startswith("UPDATE") and "triggers" not in seen:
            with psycopg.connect(dsn, autocommit=True) as other:
                seen["triggers"] = query(other, TRIGGERS_SQL)
                other.execute("SET lock_timeout = '200ms'")
                try:
                    other.execute("INSERT INTO film (film_id, title) VALUES (100, 'meanwhile')")
                    seen["write"] = "went through"
                except psycopg.errors.LockNotAvailable:
                    seen["write"] = "waited"

    film.audit.revert(actor="mallory", since=film.before, progress=look)
    assert seen == {"triggers": film.triggers, "write": "waited"}
    assert film.live() == film.expected


def test_only_the_owner_may_switch_triggers(
    film: Film, pg_server: PgServer, make_role: Callable[..., str]
) -> None:
    reviewer = make_role("reviewer")
    for grant in (
        "GRANT SELECT, INSERT, UPDATE, DELETE ON film, film_log TO {}",
        "GRANT USAGE ON SEQUENCE film_log_id_seq TO {}",
        "GRANT pgaudit_reader TO {}",
    ):
        film.conn.execute(sql.SQL(grant).format(sql.Identifier(reviewer)))
    dsn = pg_server.dsn_for(film.conn.info.dbname, user=reviewer)
    with Audit.connect(dsn) as as_reviewer:
        with pytest.raises(PermissionDenied, match="only its owner .* may switch off") as caught:
            as_reviewer.revert(actor="mallory", since=film.before)
        assert "fire_triggers" in str(caught.value.hint)
        film.assert_untouched()
        as_reviewer.revert(actor="mallory", since=film.before, fire_triggers=True)
    assert [r[:3] for r in film.live()] == [r[:3] for r in film.expected]


def test_partitions_and_deferred_foreign_keys(audit: Audit) -> None:
    """Triggers cloned onto partitions and a partition's own; a deferrable foreign key whose
    pending checks would stop ALTER TABLE from switching the triggers back."""
    conn = audit.conn
    conn.execute(
        """
        CREATE TABLE genre (id int PRIMARY KEY, name text, touched timestamptz);
        CREATE TABLE movie (id int, genre int REFERENCES genre DEFERRABLE, title text,
                            touched timestamptz, PRIMARY KEY (id)) PARTITION BY RANGE (id);
        CREATE TABLE movie_low PARTITION OF movie FOR VALUES FROM (0) TO (100);
        CREATE TABLE movie_high PARTITION OF movie FOR VALUES FROM (100) TO (200);
        CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
            $$BEGIN NEW.touched := clock_timestamp(); RETURN NEW; END$$;
        CREATE TRIGGER touch BEFORE INSERT OR UPDATE ON movie FOR EACH ROW EXECUTE FUNCTION touch();
        CREATE TRIGGER touch_high BEFORE UPDATE ON movie_high FOR EACH ROW EXECUTE FUNCTION touch();
        CREATE TRIGGER touch BEFORE INSERT OR UPDATE ON genre FOR EACH ROW EXECUTE FUNCTION touch();
        INSERT INTO genre (id, name) VALUES (1, 'drama'), (2, 'comedy');
        INSERT INTO movie (id, genre, title) VALUES (1, 1, 'a'), (150, 2, 'b');
        """
    )
    audit.enable("genre")
    audit.enable("movie")
    states = query(
        conn,
        "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger"
        " WHERE NOT tgisinternal AND tgname LIKE 'touch%' ORDER BY 1, 2",
    )
    before = instant(conn)
    expected = {t: sorted(map(str, audit.table_at(t, before))) for t in ("genre", "movie")}
    with conn.transaction():
        conn.execute("INSERT INTO genre (id, name) VALUES (3, 'horror')")
        conn.execute("UPDATE movie SET genre = 3, title = 'x'")
        conn.execute("DELETE FROM genre WHERE id = 2")
    row = conn.execute("SELECT max(txid)::text FROM audit.change").fetchone()
    assert row is not None
    result = audit.revert(txids=[int(row[0])])
    assert {(t["table"], t["trigger"]) for t in result.suppressed_triggers} == {
        ("public.genre", "touch"),
        ("public.movie", "touch"),
        ("public.movie_high", "touch"),
        ("public.movie_high", "touch_high"),
        ("public.movie_low", "touch"),
    }
    assert "SET CONSTRAINTS" in result.sql and "IMMEDIATE" in result.sql
    for table, rows in expected.items():
        assert sorted(map(str, audit.table_at(table, "now"))) == rows
    assert (
        query(
            conn,
            "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger"
            " WHERE NOT tgisinternal AND tgname LIKE 'touch%' ORDER BY 1, 2",
        )
        == states
    )


def test_a_deferrable_foreign_key_of_an_unreverted_table(audit: Audit) -> None:
    """A table the revert does not write references one it does, by a deferrable key: the
    server's pending check of the revert's DELETE is run before the triggers are switched back."""
    conn = audit.conn
    conn.execute(
        """
        CREATE TABLE kind (id int PRIMARY KEY, name text, touched timestamptz);
        CREATE TABLE thing (id int PRIMARY KEY, kind int REFERENCES kind DEFERRABLE);
        CREATE FUNCTION touch_kind() RETURNS trigger LANGUAGE plpgsql AS
            $$BEGIN NEW.touched := clock_timestamp(); RETURN NEW; END$$;
        CREATE TRIGGER touch BEFORE INSERT OR UPDATE ON kind FOR EACH ROW EXECUTE FUNCTION touch_kind();
        INSERT INTO kind (id, name) VALUES (1, 'a');
        INSERT INTO thing VALUES (1, 1);
        """
    )
    audit.enable("kind")
    conn.execute("INSERT INTO kind (id, name) VALUES (2, 'b')")
    row = conn.execute("SELECT max(txid)::text FROM audit.change").fetchone()
    assert row is not None
    result = audit.revert(txids=[int(row[0])])
    assert "SET CONSTRAINTS public.thing_kind_fkey IMMEDIATE" in result.sql
    assert query(conn, "SELECT id FROM kind ORDER BY id") == [(1,)]
    assert query(conn, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'touch'") == [("O",)]


@pytest.fixture
def cli_film(film: Film, dsn: str) -> Iterator[tuple[Film, Callable[..., Any]]]:
    def invoke(*args: str) -> Any:
        return CliRunner().invoke(main, ["--dsn", dsn, *args])

    yield film, invoke


def test_cli_dry_run_names_the_triggers_and_fire_triggers(
    cli_film: tuple[Film, Callable[..., Any]],
) -> None:
    film, invoke = cli_film
    since = film.before.isoformat()
    dry = invoke("revert", "--actor", "mallory", "--since", since, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert 'ALTER TABLE ONLY public.film DISABLE TRIGGER "film Fulltext";' in dry.stdout
    assert "ALTER TABLE ONLY public.film ENABLE ALWAYS TRIGGER film_log;" in dry.stdout
    assert "ALTER TABLE ONLY public.film ENABLE REPLICA TRIGGER replica_only;" in dry.stdout
    assert (
        "-- application triggers switched off while the revert writes"
        ' (p_fire_triggers => true lets them fire): public.film."film Fulltext"' in dry.stdout
    )
    film.assert_untouched()
    fired = invoke("revert", "--actor", "mallory", "--since", since, "--fire-triggers", "--yes")
    assert fired.exit_code == 0, fired.output
    assert "switched off" not in fired.stderr
    assert film.count_log() > film.log_rows


def test_sql_api_switches_triggers_too(film: Film) -> None:
    selection = psycopg.types.json.Jsonb({"actor": "mallory", "since": film.before.isoformat()})
    listed = query(
        film.conn,
        "SELECT trigger_name, enabled FROM audit.revert_triggers(ARRAY['film'::regclass])",
    )
    assert sorted(listed) == sorted(
        [
            ("film Fulltext", "O"),
            ("film_log", "A"),
            ("last_updated", "O"),
            ("replica_only", "R"),
            ("statements", "O"),
        ]
    )
    film.conn.execute("SELECT * FROM audit.revert(%s)", [selection])
    assert film.live() == film.expected
    assert query(film.conn, TRIGGERS_SQL) == film.triggers


def test_lock_timeout_applies_to_the_switch(film: Film, dsn: str) -> None:
    """A writer holding the table makes the revert give up after the lock timeout."""
    ready, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(dsn) as other:
            other.execute("INSERT INTO film_log (op) VALUES ('x')")
            other.execute("LOCK TABLE film IN ROW EXCLUSIVE MODE")
            ready.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        ready.wait(10)
        with Audit.connect(dsn, lock_timeout="300ms") as short, pytest.raises(LockTimeout):
            short.revert(actor="mallory", since=film.before)
    finally:
        release.set()
        holder.join()
    film.assert_untouched()
