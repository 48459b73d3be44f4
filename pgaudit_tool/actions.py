"""Responses a watch rule runs for a finding: ``alert``, ``exec:``, ``webhook:``, ``notify:``.

A rule lists its actions as strings, parsed by :func:`parse_action`:

* ``alert``: store the finding as an alert and print it. The watcher does that itself;
  :func:`run_actions` treats it as done.
* ``exec:COMMAND``: run COMMAND, split like a POSIX shell would (:func:`shlex.split`) but
  without a shell, with the finding as one line of JSON (UTF-8, newline-terminated) on its
  standard input. Its environment is the watcher's plus ``PGAUDIT_ALERT_ID``, ``PGAUDIT_RULE``
  and ``PGAUDIT_SEVERITY``. Its standard output is discarded; the last line of its standard
  error explains a failure. The command runs in a process group of its own, killed whole
  (SIGKILL) when it outlives the timeout.
* ``webhook:URL``: POST the finding JSON (``Content-Type: application/json``) to an http or
  https URL with :mod:`urllib.request`. Connection errors, timeouts and answers 5xx or 429 are
  retried with exponential backoff (a ``Retry-After`` answer is honoured up to
  :data:`RETRY_AFTER_MAX` seconds); any other 4xx is not. Redirects are not followed (a POST
  redirected would lose its body): a 3xx answer is a failure. A ``user:password@`` in the URL
  is sent as HTTP basic authentication and never shown in failure messages. The
  ``http_proxy``/``https_proxy``/``no_proxy`` environment variables apply.
* ``notify:CHANNEL``: ``SELECT pg_notify(CHANNEL, finding JSON)`` on the connection the caller
  passes, in whatever transaction the caller has open (the notification is delivered when it
  commits). PostgreSQL limits a payload to :data:`NOTIFY_PAYLOAD_MAX` bytes: a larger finding
  is sent reduced (see :func:`notify_payload`), with ``"truncated": true``; the full finding
  stays in the alert table under its ``id``. The channel is case-sensitive text: a listener
  must quote it (``LISTEN "Ops"``) unless it is lower case.

:func:`run_actions` never raises for a failing action: it returns one sentence per failure,
each naming the action, for the watcher to record (``audit.alert.action_errors``).
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import email.utils
import http.client
import json
import os
import shlex
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import psycopg

from pgaudit_tool.errors import InvalidInput
from pgaudit_tool.output import to_json_value

__all__ = [
    "KINDS",
    "NOTIFY_PAYLOAD_MAX",
    "RETRY_AFTER_MAX",
    "Action",
    "finding_json",
    "notify_payload",
    "parse_action",
    "run_actions",
]

#: The kinds of action, in the order the error messages list them.
KINDS = ("alert", "exec", "webhook", "notify")

#: A pg_notify payload must be shorter than this many bytes (in the server encoding).
NOTIFY_PAYLOAD_MAX = 8000
#: Longest channel name PostgreSQL accepts, in bytes (NAMEDATALEN - 1).
CHANNEL_MAX_BYTES = 63
#: Longest wait a webhook's ``Retry-After`` answer is honoured for, in seconds.
RETRY_AFTER_MAX = 10.0
#: How many txids a reduced notify payload keeps.
NOTIFY_TXIDS_KEPT = 20

_USAGE = "use alert, exec:COMMAND, webhook:URL or notify:CHANNEL"
_STDERR_TAIL_BYTES = 8192
_SHOWN_MAX = 200  # longest excerpt (stderr line, reason) quoted in a failure sentence
_CORE_KEYS = ("id", "rule", "detector", "severity", "at", "table", "actor", "db_user")

# Replaced in tests to observe the backoff without waiting.
_sleep = time.sleep


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Action:
    """One parsed action of a rule: ``kind`` is one of :data:`KINDS`; ``target`` is the
    command (exec), URL (webhook) or channel (notify), ``""`` for alert."""

    kind: str
    target: str = ""

    def __str__(self) -> str:
        """The action as written in a rule, e.g. ``"exec:/usr/local/bin/page-oncall"``."""
        return self.kind if self.kind == "alert" else f"{self.kind}:{self.target}"


def parse_action(text: str) -> Action:
    """Parse one action of a rule (surrounding whitespace ignored, the kind case-insensitive).

    Raises :class:`~pgaudit_tool.errors.InvalidInput` naming the action and what is wrong:
    an unknown kind, a missing or malformed command, a URL that is not http(s), a channel
    that is empty or longer than PostgreSQL allows.
    """
    if not isinstance(text, str):
        raise InvalidInput(f"action {text!r} is not text: {_USAGE}")
    stripped = text.strip()
    if not stripped:
        raise InvalidInput(f"empty action: {_USAGE}")
    if "\x00" in stripped:
        raise InvalidInput(f"action {_quote(stripped)} contains a NUL character")
    head, colon, rest = stripped.partition(":")
    kind = head.lower()
    target = rest.strip()
    if kind not in KINDS:
        raise InvalidInput(f"unknown action {_quote(stripped)}: {_USAGE}")
    if kind == "alert":
        if colon:
            raise InvalidInput(f"action {_quote(stripped)} takes no argument: write alert")
        return Action("alert", "")
    if not target:
        what = {"exec": "COMMAND", "webhook": "URL", "notify": "CHANNEL"}[kind]
        raise InvalidInput(
            f"action {_quote(stripped)} lacks its {what.lower()}: write {kind}:{what}"
        )
    if kind == "exec":
        _check_command(stripped, target)
    elif kind == "webhook":
        _check_url(stripped, target)
    else:
        _check_channel(stripped, target)
    return Action(kind, target)


def _check_command(text: str, command: str) -> None:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise InvalidInput(
            f"action {_quote(text)} has a malformed command ({str(exc).lower()})"
        ) from None
    if not argv:
        raise InvalidInput(f"action {_quote(text)} lacks its command: write exec:COMMAND")


def _check_url(text: str, url: str) -> None:
    bad = next((c for c in url if c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise InvalidInput(f"action {_quote(text)} has a URL containing {bad!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise InvalidInput(f"action {_quote(text)} has an invalid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput(f"action {_quote(text)} has an invalid URL: only http and https allowed")
    if not parts.hostname:
        raise InvalidInput(f"action {_quote(text)} has a URL without a host")


def _check_channel(text: str, channel: str) -> None:
    if len(channel.encode("utf-8")) > CHANNEL_MAX_BYTES:
        raise InvalidInput(
            f"action {_quote(text)} has a channel name longer than {CHANNEL_MAX_BYTES} bytes"
        )


def _quote(text: str) -> str:
    """``text`` in double quotes for a message, shortened if long."""
    shown = text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 1] + "…"
    return f'"{shown}"'


# --------------------------------------------------------------------------- JSON


def finding_json(finding: Mapping[str, Any]) -> str:
    """The finding as compact JSON text, non-ASCII characters kept.

    Datetimes are ISO-8601 text, decimals, IP addresses, UUIDs and other objects their text,
    bytes PostgreSQL's ``\\x`` hex, NaN and infinities ``"NaN"``/``"Infinity"`` (see
    :func:`pgaudit_tool.output.to_json_value`). Raises
    :class:`~pgaudit_tool.errors.InvalidInput` for a value nested too deeply to write.
    """
    return _dumps(finding, ascii_only=False)


def _dumps(value: Any, *, ascii_only: bool) -> str:
    try:
        return json.dumps(
            to_json_value(value),
            ensure_ascii=ascii_only,
            separators=(",", ":"),
            allow_nan=False,
            default=str,  # Decimal (kept exact by to_json_value) and RawJson: their text
        )
    except RecursionError:
        raise InvalidInput("the finding is nested too deeply to write as JSON") from None


def notify_payload(finding: Mapping[str, Any], *, ascii_only: bool = False) -> str:
    """The finding JSON for pg_notify, reduced until it is under :data:`NOTIFY_PAYLOAD_MAX` bytes.

    The whole finding when it fits; otherwise, with ``"truncated": true`` added, the first of
    these that fits: without ``detail``; also with ``txids`` cut to the first
    :data:`NOTIFY_TXIDS_KEPT`; also without ``changes`` and ``revert``; only the identifying
    keys (``id``, ``rule``, ``detector``, ``severity``, ``at``, ``table``, ``actor``,
    ``db_user``) and ``summary``, long values shortened; the same without ``summary``,
    shortened further. ``ascii_only`` escapes non-ASCII characters (for a database not encoded
    in UTF-8).
    """
    full = _dumps(finding, ascii_only=ascii_only)
    if _fits(full):
        return full
    reduced: dict[str, Any] = {k: v for k, v in finding.items() if k != "detail"}
    reduced["truncated"] = True
    candidates: list[dict[str, Any]] = [dict(reduced)]
    txids = reduced.get("txids")
    if isinstance(txids, Sequence) and not isinstance(txids, str | bytes):
        reduced["txids"] = list(txids[:NOTIFY_TXIDS_KEPT])
        candidates.append(dict(reduced))
    if "changes" in reduced or "revert" in reduced:
        reduced.pop("changes", None)
        reduced.pop("revert", None)
        candidates.append(dict(reduced))
    core = {k: _shorten(finding[k], 200) for k in _CORE_KEYS if k in finding}
    candidates.append(
        {**core, "summary": _shorten(finding.get("summary"), 1000), "truncated": True}
    )
    # At most 8 values of 100 characters, each at most 6 bytes as JSON: always fits.
    candidates.append({**{k: _shorten(finding[k], 100) for k in core}, "truncated": True})
    for candidate in candidates:
        text = _dumps(candidate, ascii_only=ascii_only)
        if _fits(text):
            return text
    raise AssertionError("unreachable: the last reduced finding always fits")


def _fits(payload: str) -> bool:
    """Whether ``payload`` is short enough for pg_notify (UTF-8 or ASCII-only text)."""
    return len(payload.encode("utf-8")) < NOTIFY_PAYLOAD_MAX


def _shorten(value: Any, limit: int) -> Any:
    """``value`` if short; long text, or a long value's JSON text, cut to ``limit`` characters."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else _dumps(value, ascii_only=False)
    if len(text) <= limit:
        return value
    return text[: limit - 1] + "…"


# --------------------------------------------------------------------------- running


def run_actions(
    actions: Sequence[Action],
    finding: Mapping[str, Any],
    conn: psycopg.Connection[Any] | None,
    *,
    exec_timeout: float = 30.0,
    webhook_timeout: float = 10.0,
    webhook_attempts: int = 3,
    webhook_backoff: float = 0.5,
) -> list[str]:
    """Run ``actions`` for ``finding``, one after the other; return what failed.

    The result has one sentence per failed action, naming it (an empty list: all
    succeeded). Nothing is raised for a failing action. ``alert`` is a no-op (the caller
    stores and prints the alert). ``conn`` is the connection notify actions use, in the
    caller's transaction; a notify action without one fails. ``exec_timeout`` bounds each
    command, ``webhook_timeout`` each HTTP attempt; a webhook is tried ``webhook_attempts``
    times at most, waiting ``webhook_backoff`` seconds after the first failure, then twice as
    long after each next one (or what a ``Retry-After`` answer asks, up to
    :data:`RETRY_AFTER_MAX`).
    """
    failures: list[str] = []
    payload: str | None = None
    for action in actions:
        if action.kind == "alert":
            continue
        try:
            if payload is None:
                payload = finding_json(finding)
            if action.kind == "exec":
                error = _run_exec(action.target, finding, payload, exec_timeout)
            elif action.kind == "webhook":
                error = _run_webhook(
                    action.target, payload, webhook_timeout, webhook_attempts, webhook_backoff
                )
            elif action.kind == "notify":
                error = _run_notify(action.target, finding, conn)
            else:
                error = f"is not a known action ({_USAGE})"
        except InvalidInput as exc:
            error = f"failed: {exc.message}"
        except Exception as exc:  # an action's failure is reported, never raised
            error = f"failed unexpectedly: {type(exc).__name__}: {_one_line(str(exc))}"
        if error:
            failures.append(f"action {_quote(_display(action))} {error}")
    return failures


def _display(action: Action) -> str:
    """The action as shown in a failure: a webhook URL's password replaced with ***."""
    if action.kind != "webhook":
        return str(action)
    parts = urllib.parse.urlsplit(action.target)
    if parts.password is None:
        return str(action)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return f"webhook:{parts._replace(netloc=f'{user}:***@{hostport}').geturl()}"


def _one_line(text: str, limit: int = _SHOWN_MAX) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _env_text(value: Any) -> str:
    return "" if value is None else str(value).replace("\x00", "")


# --------------------------------------------------------------------------- exec


def _run_exec(command: str, finding: Mapping[str, Any], payload: str, timeout: float) -> str:
    """Run ``command`` with ``payload`` on stdin; "" on success, else why it failed."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return f"has a malformed command ({str(exc).lower()})"
    if not argv:
        return "has no command"
    env = dict(os.environ)
    env["PGAUDIT_ALERT_ID"] = _env_text(finding.get("id"))
    env["PGAUDIT_RULE"] = _env_text(finding.get("rule"))
    env["PGAUDIT_SEVERITY"] = _env_text(finding.get("severity"))
    # stderr goes to a file, not a pipe: a background process the command leaves behind
    # holding its stderr open cannot make us wait, and a chatty one cannot block on a full pipe.
    with tempfile.TemporaryFile() as stderr:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
                start_new_session=True,
            )
        except FileNotFoundError:
            return f"failed: command {_quote(argv[0])} not found"
        except PermissionError:
            return f"failed: command {_quote(argv[0])} is not executable (permission denied)"
        except OSError as exc:
            return f"failed: command {_quote(argv[0])} could not be started ({exc.strerror or exc})"
        try:
            proc.communicate((payload + "\n").encode("utf-8"), timeout=max(timeout, 0.001))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return f"timed out after {timeout:g} s and was killed"
        except BaseException:
            _kill_group(proc)
            raise
        code = proc.returncode
        if code == 0:
            return ""
        line = _last_line(stderr)
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = f"was killed by {name} (exit code {code})"
        else:
            how = f"failed with exit code {code}"
        return f"{how}: {line}" if line else f"{how} and wrote nothing to stderr"


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's process group (its session: it and what it started) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()


def _last_line(stream: IO[bytes]) -> str:
    """The last non-blank line written to ``stream`` (a file), on one line, shortened."""
    size = stream.seek(0, os.SEEK_END)
    stream.seek(max(0, size - _STDERR_TAIL_BYTES))
    tail = stream.read().decode("utf-8", errors="replace")
    lines = [line for line in tail.splitlines() if line.strip()]
    return _one_line(lines[-1]) if lines else ""


# --------------------------------------------------------------------------- webhook


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Do not follow redirects: urllib would resend a POST as a GET without its body."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> None:
        return None


def _webhook_request(url: str, body: bytes) -> urllib.request.Request:
    from pgaudit_tool import __version__

    parts = urllib.parse.urlsplit(url)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"pgaudit-tool/{__version__}",
    }
    if parts.username is not None or parts.password is not None:
        user = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
        hostport = parts.netloc.rpartition("@")[2]
        url = parts._replace(netloc=hostport).geturl()
    return urllib.request.Request(url, data=body, headers=headers, method="POST")


def _run_webhook(url: str, payload: str, timeout: float, attempts: int, backoff: float) -> str:
    """POST ``payload`` to ``url``, retrying; "" on success, else why it failed."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "failed: only http and https URLs with a host are allowed"
    request = _webhook_request(url, payload.encode("utf-8"))
    opener = urllib.request.build_opener(_NoRedirect)
    attempts = max(1, attempts)
    delay = max(0.0, backoff)
    reason = ""
    for attempt in range(1, attempts + 1):
        wait: float | None = None
        try:
            with opener.open(request, timeout=timeout) as response:
                response.read(65536)
            return ""
        except urllib.error.HTTPError as exc:
            exc.close()
            reason = f"HTTP {exc.code} {exc.reason}".rstrip()
            headers = exc.headers
            if 300 <= exc.code < 400:
                where = headers.get("Location") if headers else None
                to = f" to {_one_line(where)}" if where else ""
                return f"failed: {reason}: the redirect{to} was not followed"
            if exc.code < 500 and exc.code != 429:
                return f"failed: {reason} (not retried)"
            wait = _retry_after(headers.get("Retry-After") if headers else None)
        except urllib.error.URLError as exc:
            reason = _reason(exc.reason, timeout)
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                return f"failed: {reason} (not retried)"
        except TimeoutError:
            reason = f"no answer within {timeout:g} s"
        except (OSError, http.client.HTTPException) as exc:
            reason = _reason(exc, timeout)
        if attempt < attempts:
            _sleep(delay if wait is None else wait)
            delay *= 2
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    return f"failed after {tries}: {_one_line(reason)}"


def _reason(reason: object, timeout: float) -> str:
    """Why a connection failed, in words."""
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower() if reason.strerror[:1].isupper() else reason.strerror
    text = str(reason) or type(reason).__name__
    return _one_line(text)


def _retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks to wait (delta or HTTP date), capped; None if none."""
    if not value:
        return None
    value = value.strip()
    seconds: float
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


# --------------------------------------------------------------------------- notify


def _run_notify(
    channel: str, finding: Mapping[str, Any], conn: psycopg.Connection[Any] | None
) -> str:
    """``pg_notify(channel, finding JSON)`` on ``conn``; "" on success, else why it failed."""
    if conn is None:
        return "failed: no database connection was given to send the notification on"
    if conn.closed:
        return "failed: the database connection is closed"
    # Non-ASCII text is sent as is only when its UTF-8 size is what the server counts.
    try:
        client_utf8 = codecs.lookup(conn.info.encoding).name == "utf-8"
    except LookupError:
        client_utf8 = False
    server = conn.info.parameter_status("server_encoding")
    utf8 = client_utf8 and server in ("UTF8", "SQL_ASCII")
    payload = notify_payload(finding, ascii_only=not utf8)
    try:
        conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc)
        return f"failed: {_one_line(message)}"
    return ""
