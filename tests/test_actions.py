"""Watch rule actions (pgaudit_tool.actions): parsing, exec, webhook and notify."""

from __future__ import annotations

import json
import os
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgaudit_tool
from pgaudit_tool import actions
from pgaudit_tool.actions import (
    NOTIFY_PAYLOAD_MAX,
    Action,
    finding_json,
    notify_payload,
    parse_action,
    run_actions,
)
from pgaudit_tool.errors import AuditError, InvalidInput

FINDING: dict[str, Any] = {
    "id": 42,
    "rule": "mass-delete",
    "detector": "mass_change",
    "severity": "critical",
    "at": "2024-05-01T12:34:56.789+00:00",
    "table": "public.orders",
    "actor": "zoë@example.com",
    "db_user": "app",
    "txids": [1001, 1002],
    "changes": 5000,
    "summary": "app deleted 5000 rows of public.orders in 1 transaction — Ünïcode kept",
    "revert": "pgaudit-tool revert --txid 1001 --dry-run",
    "detail": {"threshold": 1000, "baseline": [1, 2, 3]},
}

PYTHON = shlex.quote(sys.executable)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "kind", "target"),
    [
        ("alert", "alert", ""),
        ("  ALERT ", "alert", ""),
        ("exec:/usr/local/bin/page-oncall", "exec", "/usr/local/bin/page-oncall"),
        ("exec: notify-send 'DB alert' --urgency=critical", "exec", ""),
        ("webhook:https://hooks.example.com/T0/B1?x=1", "webhook", ""),
        ("Webhook:http://user:pw@127.0.0.1:8080/hook", "webhook", ""),
        ("notify:pgaudit_alerts", "notify", "pgaudit_alerts"),
        ("notify:Ops Alerts; DROP TABLE x", "notify", "Ops Alerts; DROP TABLE x"),
    ],
)
def test_parse_valid(text: str, kind: str, target: str) -> None:
    action = parse_action(text)
    assert action.kind == kind
    expected_target = target or text.strip().partition(":")[2].strip()
    assert action.target == expected_target
    assert parse_action(str(action)) == action
    if kind != "alert":
        assert str(action) == f"{kind}:{expected_target}"


def test_str_is_the_original_spelling() -> None:
    assert str(parse_action("exec:/usr/local/bin/page-oncall")) == "exec:/usr/local/bin/page-oncall"
    assert str(parse_action("alert")) == "alert"
    assert str(Action("notify", "ops")) == "notify:ops"


def test_unknown_action_message() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_action("mail:x")
    assert str(info.value) == (
        'unknown action "mail:x": use alert, exec:COMMAND, webhook:URL or notify:CHANNEL'
    )
    assert info.value.exit_code == 2
    assert isinstance(info.value, AuditError)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty action"),
        ("   ", "empty action"),
        ("alerts", 'unknown action "alerts"'),
        ("alert:now", "takes no argument"),
        ("exec:", "lacks its command"),
        ("exec:   ", "lacks its command"),
        ("exec:echo 'unbalanced", "malformed command"),
        ("webhook:", "lacks its url"),
        ("webhook:ftp://example.com/x", "only http and https"),
        ("webhook:example.com/hook", "only http and https"),
        ("webhook:file:///etc/passwd", "only http and https"),
        ("webhook:http://", "without a host"),
        ("webhook:http://example.com:99999/", "invalid URL"),
        ("webhook:http://exa mple.com/", "URL containing"),
        ("notify:", "lacks its channel"),
        ("notify:" + "c" * 64, "longer than 63 bytes"),
        ("exec:echo\x00x", "NUL"),
    ],
)
def test_parse_invalid(text: str, fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_action(text)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    if text.strip() and "\x00" not in text:
        assert f'"{text.strip()}"' in message  # names the action


# --------------------------------------------------------------------------- JSON


def test_finding_json() -> None:
    finding = {
        **FINDING,
        "at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "amount": Decimal("1.10"),
        "client": IPv4Address("10.0.0.7"),
    }
    text = finding_json(finding)
    assert "\n" not in text
    decoded = json.loads(text)
    assert text == json.dumps(decoded, ensure_ascii=False, separators=(",", ":"))  # compact
    assert "zoë" in text  # non-ASCII kept
    assert decoded["at"] == "2024-05-01T12:00:00+00:00"
    assert decoded["amount"] == "1.10"
    assert decoded["client"] == "10.0.0.7"
    assert decoded["detail"] == FINDING["detail"]


def test_notify_payload_reductions() -> None:
    assert notify_payload(FINDING) == finding_json(FINDING)

    big_detail = {**FINDING, "detail": {"keys": ["k" * 100] * 100}}
    reduced = json.loads(notify_payload(big_detail))
    assert reduced["truncated"] is True
    assert "detail" not in reduced
    assert reduced["txids"] == FINDING["txids"]

    many = {**big_detail, "txids": list(range(10**12, 10**12 + 2000))}
    reduced = json.loads(notify_payload(many))
    assert reduced["txids"] == many["txids"][:20]
    assert reduced["truncated"] is True and "detail" not in reduced
    assert reduced["revert"] == FINDING["revert"]

    # Even values nothing else could shrink give a payload that fits.
    huge = {k: "\x01é" * 20000 for k in FINDING} | {"id": 7}
    text = notify_payload(huge)
    assert len(text.encode()) < NOTIFY_PAYLOAD_MAX
    assert json.loads(text)["id"] == 7
    ascii_text = notify_payload(huge, ascii_only=True)
    assert ascii_text.isascii() and len(ascii_text) < NOTIFY_PAYLOAD_MAX


# --------------------------------------------------------------------------- exec

RECORDER = """
import json, os, sys
data = sys.stdin.buffer.read()
env = {k: v for k, v in os.environ.items() if k.startswith("PGAUDIT_")}
with open(sys.argv[1], "w", encoding="utf-8") as f:
    json.dump({"stdin": data.decode("utf-8"), "env": env, "args": sys.argv[2:]}, f)
"""

FAILER = """
import sys
sys.stdin.read()
print("starting up", file=sys.stderr)
print("disk full: cannot page anyone", file=sys.stderr)
print("   ", file=sys.stderr)
sys.exit(3)
"""

SLEEPER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(sys.argv[1], "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
time.sleep(60)
"""


def _script(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(source, encoding="utf-8")
    return path


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_exec_gets_finding_on_stdin_and_env(tmp_path: Path) -> None:
    script = _script(tmp_path, "recorder.py", RECORDER)
    out = tmp_path / "out dir" / "seen.json"
    out.parent.mkdir()
    action = parse_action(f"exec:{PYTHON} {shlex.quote(str(script))} {shlex.quote(str(out))} 'a b'")
    failures = run_actions([action], FINDING, None)
    assert failures == []
    seen = json.loads(out.read_text(encoding="utf-8"))
    assert seen["stdin"].endswith("\n") and seen["stdin"].count("\n") == 1
    assert json.loads(seen["stdin"]) == FINDING
    assert seen["env"]["PGAUDIT_ALERT_ID"] == "42"
    assert seen["env"]["PGAUDIT_RULE"] == "mass-delete"
    assert seen["env"]["PGAUDIT_SEVERITY"] == "critical"
    assert seen["args"] == ["a b"]  # split like a shell would, no shell involved


def _shown(action: actions.Action) -> str:
    """How a failure sentence names an action: quoted, cut to 200 characters with "…"
    (the paths of a test machine can make a command longer than that)."""
    text = str(action)
    return f'"{text if len(text) <= 200 else text[:199] + "…"}"'


def test_exec_failure_reports_exit_code_and_last_stderr_line(tmp_path: Path) -> None:
    script = _script(tmp_path, "failer.py", FAILER)
    action = parse_action(f"exec:{PYTHON} {shlex.quote(str(script))}")
    failures = run_actions([action], FINDING, None)
    assert len(failures) == 1
    failure = failures[0]
    assert failure.startswith(f"action {_shown(action)} ")
    assert "exit code 3" in failure
    assert "disk full: cannot page anyone" in failure
    assert "starting up" not in failure
    assert "\n" not in failure


def test_exec_failure_without_stderr(tmp_path: Path) -> None:
    failures = run_actions([parse_action(f"exec:{PYTHON} -c 'raise SystemExit(5)'")], FINDING, None)
    assert len(failures) == 1 and "exit code 5" in failures[0]


def test_exec_timeout_kills_the_process_group(tmp_path: Path) -> None:
    script = _script(tmp_path, "sleeper.py", SLEEPER)
    pids_file = tmp_path / "pids"
    action = parse_action(f"exec:{PYTHON} {shlex.quote(str(script))} {shlex.quote(str(pids_file))}")
    started = time.monotonic()
    failures = run_actions([action], FINDING, None, exec_timeout=1.5)
    elapsed = time.monotonic() - started
    assert len(failures) == 1
    assert failures[0] == f"action {_shown(action)} timed out after 1.5 s and was killed"
    assert elapsed < 10
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids), "the command or its child survived the timeout"


def test_exec_missing_or_not_executable(tmp_path: Path) -> None:
    plain = tmp_path / "not-executable.sh"
    plain.write_text("#!/bin/sh\nexit 0\n")
    plain.chmod(0o644)
    failures = run_actions(
        [
            parse_action("exec:/nonexistent/pgaudit-page-oncall --now"),
            parse_action("exec:pgaudit-no-such-command-anywhere"),
            parse_action(f"exec:{shlex.quote(str(plain))}"),
        ],
        FINDING,
        None,
    )
    assert len(failures) == 3
    assert 'command "/nonexistent/pgaudit-page-oncall" not found' in failures[0]
    assert failures[0].startswith('action "exec:/nonexistent/pgaudit-page-oncall --now" ')
    assert "not found" in failures[1]
    assert "not executable" in failures[2]


def test_exec_success_and_alert_are_not_failures() -> None:
    assert (
        run_actions([Action("alert"), parse_action(f"exec:{PYTHON} -c pass")], FINDING, None) == []
    )
    assert run_actions([], FINDING, None) == []


def test_exec_command_ignoring_stdin_succeeds() -> None:
    big = {**FINDING, "detail": {"blob": "x" * 500_000}}  # larger than a pipe buffer
    assert run_actions([parse_action(f"exec:{PYTHON} -c pass")], big, None) == []


# --------------------------------------------------------------------------- webhook


@dataclass
class Hook:
    """A local HTTP server answering POSTs from a script of (status, headers) answers."""

    url: str
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hook]:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    state = Hook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            state.requests.append(
                {"path": self.path, "headers": dict(self.headers.items()), "body": body}
            )
            if state.delay:
                time.sleep(state.delay)
            status, headers = state.answers.pop(0) if state.answers else (200, {})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff waits of webhook retries, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(actions, "_sleep", waited.append)
    return waited


def test_webhook_posts_the_finding(hook: Hook) -> None:
    failures = run_actions([parse_action(f"webhook:{hook.url}?token=1")], FINDING, None)
    assert failures == []
    assert len(hook.requests) == 1
    request = hook.requests[0]
    assert request["path"] == "/hook?token=1"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["User-Agent"] == f"pgaudit-tool/{pgaudit_tool.__version__}"
    assert "Authorization" not in request["headers"]
    assert request["body"] == finding_json(FINDING).encode("utf-8")
    assert json.loads(request["body"]) == FINDING


def test_webhook_retries_5xx(hook: Hook, sleeps: list[float]) -> None:
    hook.answers = [(500, {})]
    failures = run_actions([parse_action(f"webhook:{hook.url}")], FINDING, None)
    assert failures == []
    assert len(hook.requests) == 2
    assert hook.requests[0]["body"] == hook.requests[1]["body"]
    assert sleeps == [0.5]


def test_webhook_real_backoff_is_short_when_asked(hook: Hook) -> None:
    hook.answers = [(503, {}), (502, {})]
    started = time.monotonic()
    failures = run_actions(
        [parse_action(f"webhook:{hook.url}")], FINDING, None, webhook_backoff=0.01
    )
    assert failures == []
    assert len(hook.requests) == 3
    assert time.monotonic() - started < 2


def test_webhook_4xx_not_retried(hook: Hook, sleeps: list[float]) -> None:
    hook.answers = [(404, {})]
    action = parse_action(f"webhook:{hook.url}")
    failures = run_actions([action], FINDING, None)
    assert len(hook.requests) == 1
    assert sleeps == []
    assert len(failures) == 1
    assert failures[0].startswith(f'action "{action}" ')
    assert "HTTP 404" in failures[0] and "not retried" in failures[0]


def test_webhook_gives_up_after_the_attempts(hook: Hook, sleeps: list[float]) -> None:
    hook.answers = [(503, {})] * 5
    failures = run_actions([parse_action(f"webhook:{hook.url}")], FINDING, None, webhook_attempts=4)
    assert len(hook.requests) == 4
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(failures) == 1
    assert "after 4 attempts" in failures[0] and "HTTP 503" in failures[0]


def test_webhook_honours_retry_after(hook: Hook, sleeps: list[float]) -> None:
    hook.answers = [(429, {"Retry-After": "3"}), (503, {"Retry-After": "3600"})]
    failures = run_actions([parse_action(f"webhook:{hook.url}")], FINDING, None)
    assert failures == []
    assert len(hook.requests) == 3
    assert sleeps == [3.0, 10.0]  # capped at RETRY_AFTER_MAX


def test_webhook_redirect_not_followed(hook: Hook) -> None:
    hook.answers = [(302, {"Location": "http://127.0.0.1:1/elsewhere"})]
    failures = run_actions([parse_action(f"webhook:{hook.url}")], FINDING, None)
    assert len(hook.requests) == 1
    assert len(failures) == 1 and "HTTP 302" in failures[0] and "not followed" in failures[0]


def test_webhook_unreachable(closed_port: int, sleeps: list[float]) -> None:
    action = parse_action(f"webhook:http://127.0.0.1:{closed_port}/hook")
    failures = run_actions([action], FINDING, None, webhook_timeout=2)
    assert len(failures) == 1
    assert failures[0].startswith(f'action "{action}" failed after 3 attempts: ')
    assert "refused" in failures[0]
    assert sleeps == [0.5, 1.0]


def test_webhook_timeout(hook: Hook) -> None:
    hook.delay = 1.0
    failures = run_actions(
        [parse_action(f"webhook:{hook.url}")],
        FINDING,
        None,
        webhook_timeout=0.2,
        webhook_attempts=2,
        webhook_backoff=0.01,
    )
    assert len(failures) == 1
    assert "after 2 attempts: no answer within 0.2 s" in failures[0]
    assert len(hook.requests) == 2


def test_webhook_basic_auth_hidden_in_failures(hook: Hook) -> None:
    hook.answers = [(401, {})]
    url = hook.url.replace("http://", "http://bot:s%40cret@")
    failures = run_actions([parse_action(f"webhook:{url}")], FINDING, None)
    assert hook.requests[0]["headers"]["Authorization"] == "Basic Ym90OnNAY3JldA=="
    assert len(failures) == 1
    assert "s%40cret" not in failures[0] and "bot:***@127.0.0.1" in failures[0]


# --------------------------------------------------------------------------- notify


def _listen(dsn: str, channel: str) -> psycopg.Connection[Any]:
    listener = psycopg.connect(dsn, autocommit=True)
    listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    return listener


def _received(listener: psycopg.Connection[Any], timeout: float = 5.0) -> list[psycopg.Notify]:
    return list(listener.notifies(timeout=timeout, stop_after=1))


def test_notify_delivers_the_finding(dsn: str, conn: psycopg.Connection[Any]) -> None:
    channel = "Ops Alerts'; DROP TABLE x; --"
    with _listen(dsn, channel) as listener:
        failures = run_actions([parse_action(f"notify:{channel}")], FINDING, conn)
        assert failures == []
        received = _received(listener)
    assert len(received) == 1
    assert received[0].channel == channel
    assert received[0].payload == finding_json(FINDING)
    assert json.loads(received[0].payload) == FINDING


def test_notify_reduces_an_oversized_finding(dsn: str, conn: psycopg.Connection[Any]) -> None:
    finding = {
        **FINDING,
        "txids": list(range(5_000_000, 5_001_000)),
        "detail": {"keys": [f"row-{i}-é" for i in range(2000)]},
    }
    assert len(finding_json(finding).encode()) > NOTIFY_PAYLOAD_MAX
    with _listen(dsn, "pgaudit_alerts") as listener:
        assert run_actions([parse_action("notify:pgaudit_alerts")], finding, conn) == []
        received = _received(listener)
    assert len(received) == 1
    payload = received[0].payload
    assert len(payload.encode("utf-8")) < NOTIFY_PAYLOAD_MAX
    reduced = json.loads(payload)
    assert reduced["truncated"] is True
    assert "detail" not in reduced
    assert reduced["txids"] == finding["txids"][:20]
    assert reduced["id"] == 42 and reduced["summary"] == FINDING["summary"]


def test_notify_follows_the_callers_transaction(dsn: str) -> None:
    with _listen(dsn, "tx_chan") as listener, psycopg.connect(dsn) as sender:
        assert run_actions([parse_action("notify:tx_chan")], FINDING, sender) == []
        sender.rollback()
        assert _received(listener, timeout=0.3) == []
        assert run_actions([parse_action("notify:tx_chan")], FINDING, sender) == []
        sender.commit()
        assert len(_received(listener)) == 1


def test_notify_failures_are_reported(conn: psycopg.Connection[Any]) -> None:
    failures = run_actions(
        [parse_action("notify:x"), Action("notify", "c" * 100), Action("mail", "x")],
        FINDING,
        None,
    )
    assert len(failures) == 3
    assert failures[0].startswith('action "notify:x" failed: no database connection')
    assert "is not a known action" in failures[2]
    failures = run_actions([Action("notify", "c" * 100)], FINDING, conn)
    assert len(failures) == 1 and "channel name too long" in failures[0]
    closed = psycopg.connect(conn.info.dsn)
    closed.close()
    failures = run_actions([parse_action("notify:x")], FINDING, closed)
    assert len(failures) == 1 and "closed" in failures[0]


def test_actions_run_in_order_and_continue_after_failures(
    dsn: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    out = tmp_path / "seen.json"
    script = _script(tmp_path, "recorder.py", RECORDER)
    with _listen(dsn, "chain") as listener:
        failures = run_actions(
            [
                parse_action("exec:/nonexistent/first"),
                parse_action("alert"),
                parse_action(f"exec:{PYTHON} {shlex.quote(str(script))} {shlex.quote(str(out))}"),
                parse_action("notify:chain"),
            ],
            FINDING,
            conn,
        )
        assert len(_received(listener)) == 1
    assert len(failures) == 1 and failures[0].startswith('action "exec:/nonexistent/first"')
    assert out.exists()
