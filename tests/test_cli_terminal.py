"""The CLI as a person at a terminal meets it (issue 14): psql's connection flags and password
prompt. Commands run as subprocesses; those that need a terminal run in a pseudo-terminal
driven by pexpect.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pgaudit_tool import Audit
from tests.conftest import PgServer
from tests.test_cli import PGAUDIT_TOOL, _clean_env, failed, ok, run_cli

PASSWORD = "Sw0rd fish'\\"  # a space, a quote and a backslash: nothing may mangle it


def _flags(dsn: str, user: str | None = None) -> list[str]:
    """psql's -h -p -U -d for the database of ``dsn``."""
    parts = conninfo_to_dict(dsn)
    host = str(parts.get("host") or parts.get("hostaddr") or "localhost")
    return ["-h", host, "-p", str(parts.get("port") or 5432), "-U", user or str(parts["user"]),
            "-d", str(parts["dbname"])]  # fmt: skip


def spawn(args: list[str], home: Path, env: dict[str, str] | None = None) -> pexpect.spawn:
    """``pgaudit-tool ARGS`` in a pseudo-terminal (stdin, stdout and stderr are the terminal)."""
    return pexpect.spawn(
        PGAUDIT_TOOL, args, env=_clean_env(home, env), encoding="utf-8", timeout=60, echo=False
    )


def finished(child: pexpect.spawn) -> tuple[int, str]:
    """Wait for the end; the exit status and the rest of the output."""
    rest = child.read()
    child.close()
    assert child.exitstatus is not None, child.signalstatus
    return int(child.exitstatus), str(rest)


# --------------------------------------------------------------------------- flags


def test_psql_flags_name_the_server(audit: Audit, dsn: str, tmp_path: Path) -> None:
    """-h -p -U -d as in psql, and help at -? and --help (no more at -h)."""
    out = ok(run_cli(*_flags(dsn), "status", "--format", "json", home=tmp_path))
    assert json.loads(out) == []
    parts = conninfo_to_dict(dsn)
    long = ["--host", str(parts["host"]), "--port", str(parts["port"]), "--username",
            str(parts["user"]), "--dbname", str(parts["dbname"])]  # fmt: skip
    assert json.loads(ok(run_cli(*long, "status", "--format", "json", home=tmp_path))) == []
    for args in (["-?"], ["--help"], ["status", "-?"]):
        assert "Usage:" in ok(run_cli(*args, home=tmp_path))
    assert "-h, --host" in ok(run_cli("--help", home=tmp_path))


def test_flags_override_the_dsn_and_variables(audit: Audit, dsn: str, tmp_path: Path) -> None:
    """A flag beats the same parameter of --dsn, DATABASE_URL and PG* variables; the rest of
    each still applies."""
    parts = conninfo_to_dict(dsn)
    wrong_db = {**parts, "dbname": "no_such_db"}
    wrong = " ".join(f"{k}={v}" for k, v in wrong_db.items())
    failed(run_cli("--dsn", wrong, "status", home=tmp_path), 3, "no_such_db")
    ok(run_cli("--dsn", wrong, "-d", str(parts["dbname"]), "status", home=tmp_path))
    url = f"postgresql://{parts['user']}@{parts['host']}:{parts['port']}/no_such_db"
    ok(run_cli("-d", str(parts["dbname"]), "status", env={"DATABASE_URL": url}, home=tmp_path))
    env = {"PGHOST": str(parts["host"]), "PGPORT": str(parts["port"]), "PGDATABASE": "no_such_db"}
    ok(run_cli("-U", str(parts["user"]), "-d", str(parts["dbname"]), "status", env=env,
               home=tmp_path))  # fmt: skip
    # A connection string given as the database name, as psql takes it.
    ok(run_cli("-d", dsn, "status", home=tmp_path))
    failed(run_cli("--dsn", dsn, "-d", dsn, "status", home=tmp_path), 2, "two connection strings")


# --------------------------------------------------------------------------- passwords


@pytest.fixture
def password_role(pg_server: PgServer, audit: Audit, dsn: str) -> Iterator[str]:
    """A role that must log in with PASSWORD (pg_hba asks it for one; every other role keeps
    trust authentication), allowed to read the audit log of ``dsn``."""
    if pg_server.cluster is None:
        pytest.skip("needs a cluster of the suite's own (it edits pg_hba.conf)")
    role = f"pw_{os.getpid()}"
    audit.conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE pgaudit_reader").format(
            sql.Identifier(role), sql.Literal(PASSWORD)
        )
    )
    hba = pg_server.cluster.data_dir / "pg_hba.conf"
    before = hba.read_text(encoding="utf-8")
    rules = f"local all {role} scram-sha-256\nhost all {role} all scram-sha-256\n"
    hba.write_text(rules + before, encoding="utf-8")
    audit.conn.execute("SELECT pg_reload_conf()")
    try:
        yield role
    finally:
        hba.write_text(before, encoding="utf-8")
        audit.conn.execute("SELECT pg_reload_conf()")
        audit.conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        audit.conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_password_is_asked_for_on_a_terminal(
    password_role: str, dsn: str, tmp_path: Path
) -> None:
    """As psql: the server asks, the terminal prompts "Password for user NAME:", the answer is
    not echoed, and the command goes on."""
    child = spawn([*_flags(dsn, password_role), "status", "--format", "json"], tmp_path)
    child.expect_exact(f"Password for user {password_role}: ")
    child.sendline(PASSWORD)
    code, rest = finished(child)
    assert code == 0, rest
    assert PASSWORD not in rest
    assert json.loads(rest) == []


def test_w_asks_first_and_a_wrong_password_fails_once(
    password_role: str, dsn: str, tmp_path: Path
) -> None:
    """-W asks before connecting; a wrong answer is one error, asked once (psql does not
    ask again either)."""
    child = spawn(["-W", *_flags(dsn, password_role), "status"], tmp_path)
    child.expect_exact(f"Password for user {password_role}: ")
    child.sendline("wrong")
    code, rest = finished(child)
    assert code == 3
    assert "password authentication failed" in rest
    assert "Password for user" not in rest


def test_no_prompt_without_a_terminal_or_with_no_password(
    password_role: str, dsn: str, tmp_path: Path
) -> None:
    """Without a terminal (or with -w on one) the error is one sentence naming where a
    password goes."""
    err = failed(run_cli(*_flags(dsn, password_role), "status", home=tmp_path), 3)
    for where in ("PGPASSWORD", ".pgpass", "service file"):
        assert where in err
    child = spawn(["-w", *_flags(dsn, password_role), "status"], tmp_path)
    code, rest = finished(child)
    assert code == 3
    assert "Password for user" not in rest and "PGPASSWORD" in rest


def test_libpq_sources_of_passwords_need_no_prompt(
    password_role: str, dsn: str, tmp_path: Path
) -> None:
    """PGPASSWORD and a password file (libpq's own rules) log in without asking."""
    args = [*_flags(dsn, password_role), "status", "--format", "json"]
    assert json.loads(ok(run_cli(*args, env={"PGPASSWORD": PASSWORD}, home=tmp_path))) == []
    escaped = PASSWORD.replace("\\", "\\\\").replace(":", "\\:")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:*:{password_role}:{escaped}\n", encoding="utf-8")
    passfile.chmod(0o600)
    assert json.loads(ok(run_cli(*args, env={"PGPASSFILE": str(passfile)}, home=tmp_path))) == []


def test_the_api_asks_through_a_callback(password_role: str, dsn: str) -> None:
    """Audit.connect(password_prompt=...) is asked with the user's name; the password it gives
    serves the connections the handle opens later."""
    asked: list[str] = []

    def prompt(user: str) -> str:
        asked.append(user)
        return PASSWORD

    params = {"user": password_role}
    with Audit.connect(dsn, params=params, password_prompt=prompt) as audit:
        assert audit.status() == []
        assert conninfo_to_dict(audit.conninfo)["password"] == PASSWORD
    assert asked == [password_role]


# --------------------------------------------------------------------------- tables for people


@pytest.fixture
def changes(audit: Audit) -> Audit:
    """A few changes with long values, so that a history line is wider than 100 columns."""
    audit.conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    audit.enable("notes")
    audit.conn.execute(
        "INSERT INTO notes SELECT g, repeat('word ', 20) FROM generate_series(1, 3) g"
    )
    audit.conn.execute("UPDATE notes SET body = 'short' WHERE id = 2")
    return audit


def test_the_pager_gets_tables_on_a_terminal(changes: Audit, dsn: str, tmp_path: Path) -> None:
    """On a terminal the table goes through PAGER (here `tee FILE`); --no-pager, an empty
    PAGER and other formats do without."""
    paged = tmp_path / "paged.txt"
    env = {"PAGER": f"tee {paged}", "COLUMNS": "250"}
    child = spawn(["--dsn", dsn, "history"], tmp_path, env)
    child.setwinsize(40, 250)
    code, screen = finished(child)
    assert code == 0, screen
    text = paged.read_text(encoding="utf-8")
    assert text.splitlines()[0].split("|")[0].strip() == "id" and "(4 rows)" in text
    assert 'body: "short"' not in text and "body: " in text  # the update, in view
    paged.unlink()
    for args, extra in ((["--no-pager"], {}), ([], {"PAGER": ""})):
        child = spawn(["--dsn", dsn, *args, "history"], tmp_path, {**env, **extra})
        code, screen = finished(child)
        assert code == 0 and "(4 rows)" in screen and not paged.exists()
    child = spawn(["--dsn", dsn, "history", "--format", "jsonl"], tmp_path, env)
    assert finished(child)[0] == 0 and not paged.exists()


@pytest.mark.parametrize(("columns", "flags", "expanded"), [
    (250, [], False), (60, [], True), (250, ["-x"], True),
])  # fmt: skip
def test_expanded_when_rows_do_not_fit_the_terminal(
    changes: Audit, dsn: str, tmp_path: Path, columns: int, flags: list[str], expanded: bool
) -> None:
    """psql's \\x auto: one line per column when a row is wider than the terminal; -x always.
    No line is wider than the terminal, and nothing but text reaches it (no colours)."""
    child = pexpect.spawn(
        PGAUDIT_TOOL, ["--dsn", dsn, "--no-pager", *flags, "history"],
        env=_clean_env(tmp_path, {"NO_COLOR": "1"}), encoding="utf-8", timeout=60,
        dimensions=(40, columns),
    )  # fmt: skip
    code, screen = finished(child)
    assert code == 0, screen
    assert ("-[ RECORD 1 ]" in screen) is expanded
    assert all(len(line) <= columns for line in screen.splitlines())
    assert "\x1b" not in screen


# --------------------------------------------------------------------------- shell completion


def complete(words: str, tmp_path: Path) -> list[str]:
    """What bash's completion asks of pgaudit-tool for the last of ``words``."""
    parts = shlex.split(words)
    env = {
        "_PGAUDIT_TOOL_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(parts) - (0 if words.endswith(" ") else 1)),
    }
    ran = subprocess.run(
        [PGAUDIT_TOOL], env=_clean_env(tmp_path, env), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    return [line for line in ran.stdout.splitlines() if line]


def test_completion_of_commands_options_and_table_names(
    changes: Audit, dsn: str, tmp_path: Path
) -> None:
    """Commands and options always; table names of the database the command line names
    (nothing, and no error, when it names none that answers)."""
    assert "plain,history" in complete("pgaudit-tool his", tmp_path)
    assert "plain,--last" in complete("pgaudit-tool history --la", tmp_path)
    changes.conn.execute('CREATE TABLE "Nötes 2" (id int PRIMARY KEY)')
    got = complete(f"pgaudit-tool --dsn '{dsn}' history ", tmp_path)
    assert {"plain,public.notes", 'plain,public."Nötes 2"'} <= set(got)
    assert not any("audit." in line for line in got)
    assert complete(f"pgaudit-tool --dsn '{dsn}' history public.no", tmp_path) == [
        "plain,public.notes"
    ]
    assert complete("pgaudit-tool -h /nonexistent -p 1 history pub", tmp_path) == []
    for shell in ("bash", "zsh", "fish"):
        env = {"_PGAUDIT_TOOL_COMPLETE": f"{shell}_source"}
        script = subprocess.run(
            [PGAUDIT_TOOL], env=_clean_env(tmp_path, env), capture_output=True, text=True,
            timeout=60, check=False,
        ).stdout  # fmt: skip
        assert "_PGAUDIT_TOOL_COMPLETE" in script, shell


# --------------------------------------------------------------------------- progress, quiet


def test_revert_shows_its_planning_steps_on_a_terminal(
    changes: Audit, dsn: str, tmp_path: Path
) -> None:
    """On a terminal a revert says which planning step it is at, with counts that move; -q
    silences messages and progress but not errors."""
    update = [c["id"] for c in changes.history("notes") if c["op"] == "UPDATE"]
    insert = [c["id"] for c in changes.history("notes", pk=1)]
    child = spawn(["--dsn", dsn, "revert", "--change", str(update[0]), "--yes"], tmp_path)
    code, screen = finished(child)
    assert code == 0, screen
    steps = re.findall(r"planning: \w+ \(step (\d+) of (\d+)\)", screen)
    assert len({done for done, _ in steps}) >= 3 and len({total for _, total in steps}) == 1
    assert "reverted 1 change(s)" in screen
    quiet = run_cli("--dsn", dsn, "-q", "revert", "--change", str(insert[0]), "--yes",
                    home=tmp_path)  # fmt: skip
    assert quiet.returncode == 0 and quiet.stderr == ""
    failed(
        run_cli("--dsn", dsn, "-q", "history", "no_such_table", home=tmp_path), 2, "no_such_table"
    )


def test_enable_of_a_schema_shows_a_bar_that_moves(audit: Audit, dsn: str, tmp_path: Path) -> None:
    """enable reports each table as it goes (Python: progress(done, total, table)); on a
    terminal, from 10 tables up, a bar that ends at 100%."""
    audit.conn.execute(
        "CREATE SCHEMA many; CREATE SCHEMA more;"
        + "".join(f"CREATE TABLE many.t{i} (id int PRIMARY KEY);" for i in range(12))
        + "".join(f"CREATE TABLE more.t{i} (id int PRIMARY KEY);" for i in range(12))
    )
    seen: list[tuple[int, int, str]] = []
    audit.enable(schemas=["many"], progress=lambda *call: seen.append(call))
    assert [(done, total) for done, total, _ in seen] == [(i, 12) for i in range(13)]
    assert seen[0][2] == "many.t0" and seen[-1][2] == "done"
    child = spawn(["--dsn", dsn, "--no-pager", "enable", "--schema", "more"], tmp_path)
    code, screen = finished(child)
    assert code == 0, screen
    assert "100%" in screen and "capture enabled on 12 table(s)" in screen
