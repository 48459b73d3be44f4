"""pgbench: finding a binary that runs, running it against the scratch schema, reading its TPS."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgaudit_tool.cluster import available_installs
from pgaudit_tool.connection import redact
from pgaudit_tool.errors import AuditError, InvalidInput

#: pgbench's database argument and environment (see :func:`pgbench_target`).
Target = tuple[list[str], dict[str, str]]

_TPS = re.compile(
    r"^tps = (\d+(?:\.\d+)?) \((?:without initial connection time|excluding connections establishing)"
)
_ANY_TPS = re.compile(r"^tps = (\d+(?:\.\d+)?)")


def find_pgbench(conn: psycopg.Connection[Any], given: str | None = None) -> str | None:
    """The pgbench to use: ``given``, else the one of the server's major among the local
    installations, else ``pgbench`` on PATH, else any local installation's; None if none runs."""
    if given:
        if not _runs(given):
            raise InvalidInput(f"pgbench {given!r} cannot be run")
        return given
    major = conn.info.server_version // 10000
    installs = available_installs()
    candidates = [str(i.binary("pgbench")) for i in installs if i.major == major]
    candidates.append(shutil.which("pgbench") or "")
    candidates.extend(str(i.binary("pgbench")) for i in reversed(installs))
    return next((c for c in candidates if c and _runs(c)), None)


def _runs(path: str) -> bool:
    try:
        subprocess.run(
            [path, "--version"],
            capture_output=True,
            check=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def pgbench_target(conninfo: str, search_path: str | None) -> Target:
    """pgbench's database argument (a conninfo, without password) and environment.

    The password goes through PGPASSWORD so it does not show in the process list;
    ``search_path`` is added to the connection's ``options`` (after PGOPTIONS or the
    conninfo's own options), which is how ``pgbench -i`` creates its tables in the scratch schema.
    """
    params: dict[str, Any] = conninfo_to_dict(conninfo) if conninfo else {}
    env = dict(os.environ)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    if search_path is not None:
        base = str(params.get("options") or env.get("PGOPTIONS", ""))
        params["options"] = f"{base} -c search_path={search_path}".strip()
    target = make_conninfo("", **params)
    return ([target] if target else []), env


def run_pgbench(
    pgbench: str,
    args: Sequence[str],
    target: Target,
    timeout: float = 3600,
) -> str:
    """Run pgbench, return its standard output; AuditError with its messages when it fails."""
    argv, env = target
    try:
        done = subprocess.run(
            [pgbench, *args, *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AuditError(f"pgbench did not finish within {timeout:.0f} s") from exc
    if done.returncode != 0:
        message = redact((done.stderr or done.stdout).strip()[-2000:])
        raise AuditError(f"pgbench failed (exit code {done.returncode}): {message}")
    return done.stdout


def parse_tps(output: str) -> float:
    """The TPS figure of a pgbench report (excluding connection time when both are given)."""
    lines = [line.strip() for line in output.splitlines()]
    for pattern in (_TPS, _ANY_TPS):
        for line in lines:
            match = pattern.match(line)
            if match:
                return float(match.group(1))
    raise AuditError(f"no 'tps = ' line in pgbench's output: {output.strip()[-500:]!r}")
