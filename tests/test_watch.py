"""Watching the log: detectors on seeded incidents over a normal workload, no false positives,
the watcher's durable cursor (kill -9, late commits, rollbacks), one watcher per database,
rules files, alerts and their acknowledgement, tail, responses.

The baseline is built in each test: a normal workload, then moved back in time (commit times
spread over the 29 days before now, at every hour of the day; the tables' history starting 40
days ago), so that the detectors run with their default settings.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from pgaudit_tool import Audit
from pgaudit_tool.cli import main
from pgaudit_tool.errors import InvalidInput
from pgaudit_tool.rules import parse_rules

ACTORS = ("alice", "bob", "carol")
EXIT_BAD_INPUT, EXIT_BUSY = 2, 9


def invoke(dsn: str, *args: str) -> Result:
    result = CliRunner().invoke(main, ["--dsn", dsn, *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def cli_path() -> str:
    return str(Path(sys.executable).with_name("pgaudit-tool"))


@pytest.fixture
def shop(audit: Audit) -> Audit:
    """Two audited tables with 600 payments and 20 users."""
    audit.conn.execute(
        "CREATE SCHEMA app;"
        " CREATE TABLE app.users (id int PRIMARY KEY, name text, is_admin boolean NOT NULL DEFAULT false);"
        " CREATE TABLE app.payment (id int PRIMARY KEY, amount numeric, note text);"
        " INSERT INTO app.users SELECT g, 'user ' || g, false FROM generate_series(1, 20) g;"
        " INSERT INTO app.payment SELECT g, g * 1.5, 'p' FROM generate_series(1, 600) g;"
        " ANALYZE app.users; ANALYZE app.payment;"
    )
    audit.enable("app.users", "app.payment")
    return audit


def normal_workload(audit: Audit, transactions: int, seed: int) -> None:
    """Small transactions (1-3 rows) by a handful of actors: updates of payments and users."""
    rng = random.Random(seed)
    for i in range(transactions):
        with audit.actor(ACTORS[i % len(ACTORS)]):
            for _ in range(rng.randint(1, 3)):
                pid = rng.randint(1, 600)
                audit.conn.execute(
                    "UPDATE app.payment SET amount = amount + 1, note = %s WHERE id = %s",
                    [f"n{i}", pid],
                )
            if rng.random() < 0.3:
                audit.conn.execute(
                    "UPDATE app.users SET name = %s WHERE id = %s", [f"u{i}", rng.randint(1, 20)]
                )


def age_history(audit: Audit) -> None:
    """Move every logged transaction into the 29 days before now, at every hour of the day,
    and the start of the tables' history 40 days back."""
    audit.conn.execute(
        "WITH n AS (SELECT txid, row_number() OVER (ORDER BY txid) AS i FROM audit.transaction)"
        " UPDATE audit.transaction AS t"
        " SET committed_at = now() - (1 + n.i % 28) * interval '1 day' - (n.i % 24) * interval '1 hour',"
        "     started_at = now() - (1 + n.i % 28) * interval '1 day' - (n.i % 24) * interval '1 hour'"
        " FROM n WHERE n.txid = t.txid"
    )
    # A change's started_at is its transaction's (the key both tables are partitioned by).
    audit.conn.execute(
        "UPDATE audit.change AS c SET started_at = t.started_at FROM audit.transaction AS t"
        " WHERE t.txid = c.txid AND c.started_at <> t.started_at"
    )
    # As if auditing had started 40 days ago: the registry and its journal (which verify
    # replays) both say so.
    with audit.conn.transaction():
        audit.conn.execute("SET LOCAL timezone = 'UTC'")
        audit.conn.execute("ALTER TABLE audit.tracked_table DISABLE TRIGGER pgaudit_journal")
        audit.conn.execute(
            "UPDATE audit.tracked_table SET history_since = now() - interval '40 days'"
        )
        audit.conn.execute("ALTER TABLE audit.tracked_table ENABLE ALWAYS TRIGGER pgaudit_journal")
        for image in ("old", "new"):
            audit.conn.execute(
                f"UPDATE audit.journal AS j SET {image} = jsonb_set(j.{image}, '{{history_since}}',"
                " to_jsonb(t.history_since)) FROM audit.tracked_table AS t"
                f" WHERE j.relation = 'tracked_table' AND (j.{image} ->> 'relid')::oid = t.relid"
            )
        audit.conn.execute(
            "UPDATE audit.journal SET written_at = now() - interval '40 days'"
            " WHERE relation = 'tracked_table'"
        )


@pytest.fixture
def seasoned(shop: Audit) -> Audit:
    normal_workload(shop, 240, seed=1)
    age_history(shop)
    return shop


def txid_of(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
    assert row is not None
    return int(row[0])


def write_rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- false positives


def test_a_normal_workload_raises_nothing(seasoned: Audit, dsn: str) -> None:
    start = datetime.now(UTC)
    ok(invoke(dsn, "watch", "--once"))  # the cursor starts here
    normal_workload(seasoned, 150, seed=2)
    assert [f["summary"] for f in seasoned.anomalies(since=start)] == []
    out = ok(invoke(dsn, "watch", "--once", "--format", "jsonl"))
    assert out == ""
    assert seasoned.alerts() == []
    row = seasoned.conn.execute("SELECT evaluated FROM audit.watch_cursor").fetchone()
    assert row is not None and row[0] > 150


# --------------------------------------------------------------------------- seeded incidents


def test_mass_delete_by_a_new_actor(seasoned: Audit, dsn: str) -> None:
    ok(invoke(dsn, "watch", "--once"))
    normal_workload(seasoned, 30, seed=3)
    with seasoned.actor("mallory"):
        txid = txid_of(seasoned.conn)
        seasoned.conn.execute("DELETE FROM app.payment WHERE id <= 150")
    normal_workload(seasoned, 30, seed=4)
    found = [
        json.loads(line)
        for line in ok(invoke(dsn, "watch", "--once", "--format", "jsonl")).splitlines()
    ]
    by_detector = {f["detector"]: f for f in found}
    assert set(by_detector) == {"destructive", "mass_change", "new_actor"}, found
    for f in found:
        assert f["actor"] == "mallory" and f["txids"] == [txid] and f["table"] == "app.payment"
        assert f["revert"] == f"pgaudit-tool revert --txid {txid} --dry-run"
        assert isinstance(f["id"], int)
    d = by_detector["destructive"]
    assert d["severity"] == "critical" and d["changes"] == 150
    assert "mallory" in d["summary"] and "deleted 150 rows of app.payment" in d["summary"]
    assert "% of the table" in by_detector["mass_change"]["summary"]
    # The command undoes exactly the incident.
    command = d["revert"].split()[1:-1]
    ok(invoke(dsn, *command, "--yes"))
    row = seasoned.conn.execute("SELECT count(*) FROM app.payment").fetchone()
    assert row == (600,)
    # Stored, and not raised again (the revert, a mass insert of its own, is a new finding).
    assert {a["detector"] for a in seasoned.alerts() if a["txids"] == [txid]} == set(by_detector)
    again = ok(invoke(dsn, "watch", "--once", "--format", "jsonl")).splitlines()
    assert again and all(json.loads(x)["actor"] == "pgaudit-tool revert" for x in again)


def test_privilege_escalation_by_rule(seasoned: Audit, dsn: str, tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        '[[rule]]\nname = "admin-granted"\ndetector = "sensitive_column"\ntable = "app.users"\n'
        'columns = ["is_admin"]\nold = false\nnew = true\n',
    )
    ok(invoke(dsn, "watch", "--once", "--rules", str(rules)))
    with seasoned.actor("bob"):
        seasoned.conn.execute("UPDATE app.users SET is_admin = false, name = 'x' WHERE id = 4")
    with seasoned.actor("bob"):
        txid = txid_of(seasoned.conn)
        seasoned.conn.execute("UPDATE app.users SET is_admin = true WHERE id = 3")
    found = [
        json.loads(x)
        for x in ok(
            invoke(dsn, "watch", "--once", "--rules", str(rules), "--format", "jsonl")
        ).splitlines()
    ]
    assert [f["rule"] for f in found] == ["admin-granted"], found
    f = found[0]
    assert f["severity"] == "critical" and f["actor"] == "bob" and f["txids"] == [txid]
    assert "is_admin" in f["summary"] and "false to true" in f["summary"]
    ok(invoke(dsn, *f["revert"].split()[1:-1], "--yes"))
    row = seasoned.conn.execute("SELECT is_admin FROM app.users WHERE id = 3").fetchone()
    assert row == (False,)


def test_truncate_is_destructive(seasoned: Audit, dsn: str) -> None:
    ok(invoke(dsn, "watch", "--once"))
    with seasoned.actor("alice"):
        txid = txid_of(seasoned.conn)
        seasoned.conn.execute("TRUNCATE app.users")
    stored: list[dict[str, Any]] = []
    seasoned.watch(once=True, emit=stored.append)
    destructive = [f for f in stored if f["detector"] == "destructive"]
    assert len(destructive) == 1 and destructive[0]["txids"] == [txid]
    assert "truncated app.users" in destructive[0]["summary"]
    ok(invoke(dsn, *destructive[0]["revert"].split()[1:-1], "--yes"))
    assert seasoned.conn.execute("SELECT count(*) FROM app.users").fetchone() == (20,)


def test_night_burst_by_a_new_actor(seasoned: Audit, dsn: str, tmp_path: Path) -> None:
    today = datetime.now(UTC).strftime("%a").lower()
    days = [d for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun") if d != today]
    rules = write_rules(
        tmp_path,
        f'[detector.off_hours]\ntimezone = "UTC"\ndays = {json.dumps(days)}\nhours = "00:00-24:00"\n',
    )
    ok(invoke(dsn, "watch", "--once", "--rules", str(rules)))
    txids = []
    for i in range(30):
        with seasoned.actor("eve"):
            txids.append(txid_of(seasoned.conn))
            seasoned.conn.execute(
                "UPDATE app.payment SET note = %s WHERE id BETWEEN %s AND %s",
                [f"e{i}", i * 20 + 1, i * 20 + 20],
            )
    found = [
        json.loads(x)
        for x in ok(
            invoke(dsn, "watch", "--once", "--rules", str(rules), "--format", "jsonl")
        ).splitlines()
    ]
    detectors = sorted(f["detector"] for f in found)
    assert detectors == ["burst", "new_actor", "off_hours"], found
    burst = next(f for f in found if f["detector"] == "burst")
    assert burst["actor"] == "eve" and burst["changes"] == 600
    assert "--actor eve" in burst["revert"]
    ok(invoke(dsn, *_unquoted(burst["revert"])[1:-1], "--yes"))
    assert seasoned.conn.execute(
        "SELECT count(*) FROM app.payment WHERE note LIKE 'e%'"
    ).fetchone() == (0,)


def _unquoted(command: str) -> list[str]:
    import shlex

    return shlex.split(command)


def test_capture_disabled_by_a_table_owner_is_critical(
    seasoned: Audit, dsn: str, make_role: Any, pg_server: Any
) -> None:
    owner = make_role("owner")
    seasoned.conn.execute(
        f'ALTER TABLE app.users OWNER TO "{owner}"; GRANT USAGE ON SCHEMA app TO "{owner}"'
    )
    # Without the guard event triggers (an install by a non-superuser), the owner can do it.
    seasoned.conn.execute("ALTER EVENT TRIGGER pgaudit_guard_ddl DISABLE")
    try:
        with psycopg.connect(
            pg_server.dsn_for(seasoned.conn.info.dbname, user=owner), autocommit=True
        ) as c:
            c.execute("ALTER TABLE app.users DISABLE TRIGGER pgaudit_update")
        found = [
            json.loads(x)
            for x in ok(invoke(dsn, "watch", "--once", "--format", "jsonl")).splitlines()
        ]
        integrity = [f for f in found if f["detector"] == "integrity"]
        assert integrity and all(f["severity"] == "critical" for f in integrity), found
        assert any("app.users" in f["summary"] for f in integrity)
        # Not raised again while open.
        assert ok(invoke(dsn, "watch", "--once", "--format", "jsonl")) == ""
    finally:
        seasoned.conn.execute("ALTER EVENT TRIGGER pgaudit_guard_ddl ENABLE ALWAYS")


# --------------------------------------------------------------------------- the cursor


def test_a_late_commit_with_lower_ids_is_still_evaluated(seasoned: Audit, dsn: str) -> None:
    ok(invoke(dsn, "watch", "--once"))
    with psycopg.connect(dsn) as late:
        late.execute("SELECT set_config('pgaudit.actor', 'mallory', true)")
        late_txid = txid_of(late)
        late.execute("DELETE FROM app.payment WHERE id <= 120")  # lower change ids
        with seasoned.actor("bob"):
            seasoned.conn.execute("UPDATE app.users SET name = 'b' WHERE id = 2")
        with seasoned.actor("alice"):
            seasoned.conn.execute("DELETE FROM app.payment WHERE id BETWEEN 300 AND 410")
        first = [
            json.loads(x)
            for x in ok(invoke(dsn, "watch", "--once", "--format", "jsonl")).splitlines()
        ]
        assert {f["actor"] for f in first if f["detector"] == "destructive"} == {"alice"}
        late.commit()
    second = [
        json.loads(x) for x in ok(invoke(dsn, "watch", "--once", "--format", "jsonl")).splitlines()
    ]
    destructive = [f for f in second if f["detector"] == "destructive"]
    assert [f["txids"] for f in destructive] == [[late_txid]]


def test_rolled_back_changes_raise_nothing(seasoned: Audit, dsn: str) -> None:
    ok(invoke(dsn, "watch", "--once"))
    with pytest.raises(RuntimeError), seasoned.actor("mallory"):
        seasoned.conn.execute("DELETE FROM app.payment")
        raise RuntimeError("roll back")
    assert ok(invoke(dsn, "watch", "--once", "--format", "jsonl")) == ""
    assert seasoned.conn.execute("SELECT count(*) FROM app.payment").fetchone() == (600,)


def _destructive_incidents(dsn: str, count: int, pause: float) -> list[int]:
    """``count`` transactions each deleting then re-inserting 100 rows (a destructive alert each)."""
    txids = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(count):
            with conn.transaction():
                txids.append(txid_of(conn))
                conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS keep AS SELECT * FROM app.payment WHERE false"
                )
                conn.execute(
                    "WITH d AS (DELETE FROM app.payment WHERE id <= 100 RETURNING *) INSERT INTO keep SELECT * FROM d"
                )
                conn.execute("INSERT INTO app.payment SELECT * FROM keep")
                conn.execute("DELETE FROM keep")
            time.sleep(pause)
    return txids


def test_kill_9_skips_nothing_and_raises_nothing_twice(seasoned: Audit, dsn: str) -> None:
    ok(invoke(dsn, "watch", "--once"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [cli_path(), "--dsn", dsn, "watch", "--interval", "0.05", "--format", "jsonl"]
    watcher = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    try:
        txids = _destructive_incidents(dsn, 12, 0.02)
        watcher.send_signal(signal.SIGKILL)
        watcher.wait(10)
        txids += _destructive_incidents(dsn, 6, 0.0)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    ok(invoke(dsn, "watch", "--once"))
    rows = seasoned.conn.execute(
        "SELECT x::text::bigint, count(*) FROM audit.alert, unnest(txids) x"
        " WHERE detector = 'destructive' GROUP BY 1"
    ).fetchall()
    assert dict(rows) == {t: 1 for t in txids}


def test_sigterm_stops_the_watcher_cleanly(seasoned: Audit, dsn: str) -> None:
    args = [cli_path(), "--dsn", dsn, "watch", "--interval", "0.1"]
    watcher = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    watcher.send_signal(signal.SIGTERM)
    _, err = watcher.communicate(timeout=20)
    assert watcher.returncode == 0, err
    assert "Traceback" not in err


def test_one_watcher_per_database(seasoned: Audit, dsn: str) -> None:
    args = [cli_path(), "--dsn", dsn, "watch", "--interval", "0.2"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            row = seasoned.conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            ).fetchone()
            if row and row[0]:
                break
            time.sleep(0.1)
        second = subprocess.run([*args[:-2], "--once"], capture_output=True, text=True, timeout=60)
        assert second.returncode == EXIT_BUSY, second.stderr
        assert "another watcher is running" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=20)


# --------------------------------------------------------------------------- rules files

RULES_EXAMPLE = """
[detector.mass_change]
min_rows = 500
severity = "critical"

[detector.off_hours]
timezone = "Europe/Paris"
days = ["mon", "tue", "wed", "thu", "fri"]
hours = "08:00-19:00"

[[rule]]
name = "staff-password-changed"
detector = "sensitive_column"
table = "app.users"
columns = ["name"]
severity = "critical"
actions = ["alert", "exec:/bin/true"]

[[rule]]
name = "bulk-delete-by-app"
detector = "destructive"
tables = ["app.payment", "app.users"]
roles = ["app_rw"]
min_rows = 50
"""


def test_the_readme_rules_example_loads(shop: Audit) -> None:
    rules = shop.rules(None)
    assert {r.name for r in rules.rules} >= {"mass_change", "destructive", "integrity"}
    parsed = parse_rules(RULES_EXAMPLE)
    names = [r.name for r in parsed.rules]
    assert "staff-password-changed" in names and "bulk-delete-by-app" in names
    mass = next(r for r in parsed.rules if r.name == "mass_change")
    assert mass.get("min_rows") == 500 and mass.severity == "critical"
    bulk = next(r for r in parsed.rules if r.name == "bulk-delete-by-app")
    assert bulk.get("min_rows") == 50 and bulk.roles == ("app_rw",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[detector.mass_change\nmin_rows = 1\n", "not valid TOML"),
        ("[detector.mass_change]\nmin_row = 5\n", "line 2"),
        ("[detector.mass_change]\nmin_rows = -5\n", "line 2"),
        ("[detector.telepathy]\n", "unknown detector 'telepathy'"),
        ('[[rule]]\nname = "x"\ndetector = "nope"\n', "line 3"),
        ('[[rule]]\nname = "x"\ndetector = "destructive"\nseverity = "urgent"\n', "line 4"),
        ('[detector.off_hours]\nhours = "8-19"\n', "line 2"),
        ('[detector.off_hours]\ntimezone = "Mars/Olympus"\n', "unknown time zone"),
        ('[[rule]]\nname = "x"\ndetector = "destructive"\nactions = ["mail:x"]\n', "line 4"),
        (
            '[[rule]]\nname = "s"\ndetector = "sensitive_column"\ntable = "app.users"\n',
            "needs columns",
        ),
        ('[[rule]]\nname = "x"\ndetector = "destructive"\n\n\ntable = "app.nope"\n', "line 6"),
        ('[[rule]]\nname = "x"\ndetector = "destructive"\nops = ["MERGE"]\n', "line 4"),
        ("[surprise]\n", "unknown section"),
    ],
)
def test_bad_rules_files_name_the_line_and_key(
    shop: Audit, dsn: str, tmp_path: Path, text: str, expected: str
) -> None:
    path = write_rules(tmp_path, text)
    with pytest.raises(InvalidInput) as err:
        shop.rules(path)
    assert expected in err.value.message, err.value.message
    assert str(path) in err.value.message
    result = invoke(dsn, "anomalies", "--rules", str(path))
    assert result.exit_code == EXIT_BAD_INPUT
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert shop.alerts() == []


def test_a_rule_on_a_table_that_is_not_audited(shop: Audit, tmp_path: Path) -> None:
    shop.conn.execute("CREATE TABLE app.plain (id int PRIMARY KEY)")
    path = write_rules(
        tmp_path, '[[rule]]\nname = "x"\ndetector = "destructive"\ntable = "app.plain"\n'
    )
    with pytest.raises(InvalidInput, match="line 4.*not audited"):
        shop.rules(path)


# --------------------------------------------------------------------------- alerts, tail


def test_alerts_list_and_ack(seasoned: Audit, dsn: str) -> None:
    ok(invoke(dsn, "watch", "--once"))
    with seasoned.actor("alice"):
        seasoned.conn.execute("TRUNCATE app.users")
    ok(invoke(dsn, "watch", "--once"))
    listed = json.loads(ok(invoke(dsn, "alerts", "--format", "json")))
    assert listed and all(a["acked_at"] is None for a in listed)
    critical = json.loads(ok(invoke(dsn, "alerts", "--severity", "critical", "--format", "json")))
    assert {a["severity"] for a in critical} == {"critical"}
    table = ok(invoke(dsn, "alerts"))
    assert "destructive" in table
    ids = [str(a["id"]) for a in listed]
    result = invoke(dsn, "alerts", "--ack", ids[0], *ids[1:], "--by", "dba on call")
    ok(result)
    assert f"acknowledged {len(ids)} alert(s)" in result.stderr
    acked = seasoned.alerts()
    assert all(a["acked_by"] == "dba on call" and a["acked_at"] is not None for a in acked)
    assert json.loads(ok(invoke(dsn, "alerts", "--open", "--format", "json"))) == []
    bad = invoke(dsn, "alerts", "--ack", "999999")
    assert bad.exit_code == EXIT_BAD_INPUT and "no alert with id 999999" in bad.stderr


def test_tail_last_and_follow(shop: Audit, dsn: str) -> None:
    for i in range(15):
        with shop.actor(ACTORS[i % 3]):
            shop.conn.execute("UPDATE app.users SET name = %s WHERE id = %s", [f"t{i}", i + 1])
    last = [
        json.loads(x) for x in ok(invoke(dsn, "tail", "-n", "5", "--format", "jsonl")).splitlines()
    ]
    assert [c["pk"] for c in last] == [{"id": i} for i in range(11, 16)]
    only = [
        json.loads(x)
        for x in ok(
            invoke(dsn, "tail", "app.users", "--actor", "bob", "--format", "jsonl")
        ).splitlines()
    ]
    assert only and {c["actor"] for c in only} == {"bob"}
    assert "UPDATE" in ok(invoke(dsn, "tail", "-n", "2"))
    follower = subprocess.Popen(
        [
            cli_path(),
            "--dsn",
            dsn,
            "tail",
            "-n",
            "0",
            "--follow",
            "--interval",
            "0.1",
            "--format",
            "jsonl",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # A change made before the follower took its starting snapshot is history, not
        # followed (-n 0): change again every 2 s until the follower shows one, so that no
        # fixed sleep or probe of its progress can lose the race on a loaded machine.
        assert follower.stdout is not None
        deadline = time.monotonic() + 90
        with selectors.DefaultSelector() as selector:
            selector.register(follower.stdout, selectors.EVENT_READ)
            n = 0
            while True:
                n += 1
                with shop.actor("zed"):
                    shop.conn.execute(
                        "UPDATE app.users SET name = %s WHERE id = 20", (f"followed {n}",)
                    )
                if selector.select(timeout=2):
                    break
                assert follower.poll() is None, "the follower exited"
                assert time.monotonic() < deadline, "the follower showed nothing in 90 s"
        line = follower.stdout.readline()
        assert json.loads(line)["actor"] == "zed"
    finally:
        follower.send_signal(signal.SIGTERM)
        _, err = follower.communicate(timeout=20)
    assert follower.returncode == 0, err


def test_exec_response_runs_once_per_alert(seasoned: Audit, dsn: str, tmp_path: Path) -> None:
    sink = tmp_path / "sink.jsonl"
    script = tmp_path / "page.py"
    script.write_text(f"import sys\nopen({str(sink)!r}, 'a').write(sys.stdin.read())\n")
    rules = write_rules(
        tmp_path,
        f'[detector.destructive]\nactions = ["alert", "exec:{sys.executable} {script}"]\n',
    )
    ok(invoke(dsn, "watch", "--once", "--rules", str(rules)))
    with seasoned.actor("alice"):
        seasoned.conn.execute("TRUNCATE app.users")
    ok(invoke(dsn, "watch", "--once", "--rules", str(rules)))
    ok(invoke(dsn, "watch", "--once", "--rules", str(rules)))
    pages = [json.loads(x) for x in sink.read_text().splitlines()]
    assert [p["detector"] for p in pages] == ["destructive"]
    stored = seasoned.alerts(rule="destructive")
    assert stored[0]["actions_done_at"] is not None and stored[0]["action_errors"] is None


def test_anomalies_changes_nothing_and_scans_the_past(seasoned: Audit, dsn: str) -> None:
    start = datetime.now(UTC) - timedelta(seconds=1)
    with seasoned.actor("mallory"):
        seasoned.conn.execute("DELETE FROM app.payment WHERE id <= 120")
    found = json.loads(
        ok(invoke(dsn, "anomalies", "--since", start.isoformat(), "--format", "json"))
    )
    assert {f["detector"] for f in found} >= {"destructive", "new_actor"}
    assert "id" not in found[0]
    assert seasoned.alerts() == []
    assert seasoned.conn.execute("SELECT count(*) FROM audit.watch_cursor").fetchone() == (0,)
    bad = invoke(dsn, "anomalies", "--since", "now", "--until", "yesterday")
    assert bad.exit_code == EXIT_BAD_INPUT


def test_watch_without_the_schema(dsn: str) -> None:
    result = invoke(dsn, "watch", "--once")
    assert result.exit_code == 4 and "install" in result.stderr


def test_names_cannot_drive_the_reviewers_terminal(shop: Audit, dsn: str) -> None:
    shop.conn.execute('CREATE TABLE app."red\x1b[31m\nline" (id int PRIMARY KEY)')
    shop.enable('app."red\x1b[31m\nline"')
    ok(invoke(dsn, "watch", "--once"))
    with shop.actor("eve\x1b]0;owned\x07"):
        shop.conn.execute('INSERT INTO app."red\x1b[31m\nline" SELECT generate_series(1, 5)')
        shop.conn.execute('TRUNCATE app."red\x1b[31m\nline"')
    out = ok(invoke(dsn, "watch", "--once"))
    assert "truncated" in out and "\\x1b[31m" in out
    assert "\x1b" not in out and "\x07" not in out and len(out.splitlines()) % 2 == 0
    tailed = ok(invoke(dsn, "tail", "-n", "3"))
    assert "\x1b" not in tailed and len(tailed.splitlines()) == 3


def test_a_login_role_that_never_deleted_before(
    seasoned: Audit, dsn: str, make_role: Any, pg_server: Any
) -> None:
    intruder = make_role("intruder")
    seasoned.conn.execute(
        f'GRANT USAGE ON SCHEMA app TO "{intruder}"; GRANT SELECT, DELETE ON app.payment TO "{intruder}"'
    )
    ok(invoke(dsn, "watch", "--once"))
    with psycopg.connect(pg_server.dsn_for(seasoned.conn.info.dbname, user=intruder)) as c:
        txid = txid_of(c)
        c.execute("DELETE FROM app.payment WHERE id > 450")
    found = [
        json.loads(x) for x in ok(invoke(dsn, "watch", "--once", "--format", "jsonl")).splitlines()
    ]
    assert {f["detector"] for f in found} == {
        "destructive",
        "mass_change",
        "new_actor",
        "new_client",
    } or {f["detector"] for f in found} == {"destructive", "mass_change", "new_actor"}, found
    for f in found:
        assert f["db_user"] == intruder and f["actor"] is None and f["txids"] == [txid]
        assert f"login role {intruder}" in f["summary"]
    ok(
        invoke(
            dsn,
            *next(f for f in found if f["detector"] == "destructive")["revert"].split()[1:-1],
            "--yes",
        )
    )
    assert seasoned.conn.execute("SELECT count(*) FROM app.payment").fetchone() == (600,)
