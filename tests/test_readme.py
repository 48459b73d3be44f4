"""The README's Quick start, run as written: its SQL blocks by a psql-like session, each
``$ pgaudit-tool ...`` line of its console blocks by the installed CLI, whose output (stdout,
then stderr, as a terminal shows them) must be the lines the README shows, times, transaction
ids and process ids aside.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import PgServer, fresh_database
from tests.test_cli import PGAUDIT_TOOL, _clean_env

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```(sql|console)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
#: Values that differ from run to run, and what they become before comparing.
_VARIABLE = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00"), "<time>"),
    (re.compile(r'"(txid|backend_pid)":\d+'), r'"\1":<n>'),
]


def quick_start() -> list[tuple[str, str]]:
    """The (kind, text) of every sql and console block of the Quick start, in order."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(section)]


def steps(console: str) -> list[tuple[list[str], list[str]]]:
    """Each ``$ pgaudit-tool`` command of a console block with the lines it shows."""
    found: list[tuple[list[str], list[str]]] = []
    for line in console.splitlines():
        if line.startswith("$ "):
            words = shlex.split(line[2:], comments=True)
            found.append((words, []))
        elif found:
            found[-1][1].append(line)
    return [(words, lines) for words, lines in found if words[0] == "pgaudit-tool"]


def normalized(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        for pattern, replacement in _VARIABLE:
            line = pattern.sub(replacement, line)
        out.append(line.rstrip())
    return out


def test_the_quick_start_runs_as_written(pg_server: PgServer, tmp_path: Path) -> None:
    if pg_server.cluster is None:
        pytest.skip("needs a cluster of the suite's own (a Unix socket: no client address)")
    blocks = quick_start()
    assert [kind for kind, _ in blocks] == ["sql", "console", "sql", "console"]
    assert sum(len(steps(text)) for kind, text in blocks if kind == "console") >= 5
    with fresh_database(pg_server, "readme_quick_start") as dsn:
        dbname = conninfo_to_dict(dsn)["dbname"]
        socket = {"host": str(pg_server.cluster.directory), "port": str(pg_server.cluster.port)}
        env = _clean_env(tmp_path, {
            "PGHOST": socket["host"], "PGPORT": socket["port"], "PGUSER": "postgres",
            "PGDATABASE": str(dbname),
        })  # fmt: skip
        session = psycopg.connect(
            **socket, dbname=str(dbname), user="postgres", application_name="psql", autocommit=True
        )
        with session:
            for kind, text in blocks:
                if kind == "sql":
                    for statement in filter(str.strip, text.split(";\n")):
                        session.execute(statement)
                    continue
                for words, shown in steps(text):
                    ran = subprocess.run(
                        [PGAUDIT_TOOL, *words[1:]], env=env, text=True, timeout=120, check=False,
                        capture_output=True,
                    )  # fmt: skip
                    assert ran.returncode == 0, ran.stderr
                    # As a terminal shows them: the data (stdout), then the message (stderr).
                    printed = ran.stdout.splitlines() + ran.stderr.splitlines()
                    assert normalized(printed) == normalized(shown), (
                        f"README shows for {' '.join(words)}:\n" + "\n".join(shown)
                        + "\n\nit prints:\n" + "\n".join(printed)
                    )  # fmt: skip
    assert os.environ.get("PGHOST") != socket["host"]  # the test's environment was its own
