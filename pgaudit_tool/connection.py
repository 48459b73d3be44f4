"""Where to connect, and how: the connection rules shared by every command.

Precedence, as in the PostgreSQL client tools:

1. an explicit ``--dsn`` (key=value conninfo or URI);
2. the libpq environment (``PGHOST``, ``PGSERVICE``, ``PGUSER``, ...): libpq applies its
   own rules, including the service file and ``.pgpass``;
3. ``DATABASE_URL``, the twelve-factor convention;
4. libpq's built-in defaults (local socket, current OS user).

SQLAlchemy-style URIs (``postgresql+psycopg://``) are accepted everywhere and normalised to
``postgresql://`` because libpq rejects the ``+driver`` suffix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgaudit_tool.db import choose_lock_timeout, translated_errors
from pgaudit_tool.errors import ConnectionFailed

if TYPE_CHECKING:
    import sqlalchemy

__all__ = [
    "LIBPQ_ENV_VARS",
    "connect",
    "normalize_uri",
    "redact",
    "resolve_conninfo",
    "sqlalchemy_engine",
]

#: Environment variables libpq reads as connection parameters (``PQconndefaults``).
#: Session-default variables such as PGTZ or PGDATESTYLE do not choose a server, so they
#: do not count. Empty values count as unset.
LIBPQ_ENV_VARS: frozenset[str] = frozenset(
    {
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGDATABASE",
        "PGUSER",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGAPPNAME",
        "PGCONNECT_TIMEOUT",
        "PGCLIENTENCODING",
        "PGCHANNELBINDING",
        "PGSSLMODE",
        "PGSSLNEGOTIATION",
        "PGSSLCOMPRESSION",
        "PGSSLCERT",
        "PGSSLKEY",
        "PGSSLCERTMODE",
        "PGSSLROOTCERT",
        "PGSSLCRL",
        "PGSSLCRLDIR",
        "PGSSLSNI",
        "PGREQUIREPEER",
        "PGREQUIREAUTH",
        "PGREQUIRESSL",
        "PGSSLMINPROTOCOLVERSION",
        "PGSSLMAXPROTOCOLVERSION",
        "PGMINPROTOCOLVERSION",
        "PGMAXPROTOCOLVERSION",
        "PGGSSENCMODE",
        "PGKRBSRVNAME",
        "PGGSSLIB",
        "PGGSSDELEGATION",
        "PGTARGETSESSIONATTRS",
        "PGLOADBALANCEHOSTS",
    }
)

#: Conninfo keywords whose values are secrets (libpq marks them with dispchar ``*``).
_SECRET_KEYS = ("password", "sslpassword", "oauth_client_secret")

_DRIVER_URI = re.compile(r"^\s*postgres(?:ql)?\+[A-Za-z0-9_.-]+://", re.IGNORECASE)
_URI_USERINFO = re.compile(r"(?P<head>://[^:/?#@\s]*:)(?P<secret>[^@/?#\s]*)(?=@)")
_KV_SECRET = re.compile(
    r"(?P<head>\b(?:" + "|".join(_SECRET_KEYS) + r")\s*=\s*)"
    r"(?P<secret>'(?:[^'\\]|\\.)*'?|[^\s&]*)",
    re.IGNORECASE,
)
_SEVERITY = re.compile(r"\b(?:FATAL|ERROR|PANIC):\s*")
_QUOTED = re.compile(r'"([^"]*)"')
_PUNCTUATION = re.compile(r"[^\w\s]")

_HINT = (
    "Pass --dsn (a 'key=value' conninfo or a postgresql:// URI), or set the PG* variables "
    "(PGHOST, PGPORT, PGUSER, PGDATABASE, PGSERVICE, ...), or set DATABASE_URL."
)
_REDACTED = "***"


def normalize_uri(dsn: str) -> str:
    """Rewrite a SQLAlchemy-style ``postgres[ql]+driver://`` prefix to ``postgresql://``.

    Anything else (key=value strings, plain URIs) is returned unchanged.
    """
    return _DRIVER_URI.sub("postgresql://", dsn, count=1)


def resolve_conninfo(dsn: str | None, environ: Mapping[str, str] | None = None) -> str:
    """Return the conninfo string to hand to libpq, applying the tool's precedence rules.

    An empty ``dsn`` counts as not given. The empty string result means "let libpq decide"
    (PG* variables, service file, .pgpass, built-in defaults).
    """
    env = os.environ if environ is None else environ
    if dsn:
        return normalize_uri(dsn)
    if _libpq_env_set(env):
        return ""
    database_url = env.get("DATABASE_URL", "")
    if database_url:
        return normalize_uri(database_url)
    return ""


def _libpq_env_set(env: Mapping[str, str]) -> bool:
    """Tell whether any libpq connection variable is set to a non-empty value."""
    return any(env.get(name) for name in LIBPQ_ENV_VARS)


def connect(
    dsn: str | None,
    *,
    autocommit: bool = True,
    application_name: str = "pgaudit-tool",
    lock_timeout: str | None = None,
) -> psycopg.Connection[Any]:
    """Open a psycopg connection following :func:`resolve_conninfo`.

    ``application_name`` is passed as libpq's ``fallback_application_name``: it applies only
    when neither the conninfo, ``PGAPPNAME`` nor the service file sets ``application_name``.
    ``lock_timeout``: for the connection's write transactions, see
    :func:`pgaudit_tool.db.choose_lock_timeout` (a bad value raises InvalidInput).

    Raises :class:`~pgaudit_tool.errors.ConnectionFailed` (never a psycopg error) when the
    server cannot be reached, refuses the login, or the connection string is malformed.
    The message never contains a password.
    """
    conninfo = resolve_conninfo(dsn)
    try:
        full = make_conninfo(conninfo, fallback_application_name=application_name)
        conn = psycopg.connect(full, autocommit=True)
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
        raise _connection_failed(exc, conninfo) from None
    try:
        with translated_errors():
            choose_lock_timeout(conn, lock_timeout)  # in autocommit mode: see there
        conn.autocommit = autocommit
    except BaseException:
        conn.close()
        raise
    return conn


def _connection_failed(exc: psycopg.Error, conninfo: str) -> ConnectionFailed:
    """Build the user-facing error for a failed connection attempt, secrets removed."""
    reason = redact(str(exc), _secrets(conninfo))
    if isinstance(exc, psycopg.ProgrammingError) and _has_secret(conninfo):
        # libpq quotes pieces of an unparsable string ('missing "=" after "..."'): with a
        # password in it, any piece may belong to the password.
        reason = _QUOTED.sub(_redact_quoted, reason)
    reason = _one_sentence(reason)
    if isinstance(exc, psycopg.ProgrammingError):
        message = f"Invalid connection string: {reason}."
    else:
        message = f"Could not connect to the database: {reason}."
    return ConnectionFailed(message, hint=_HINT)


def _one_sentence(reason: str) -> str:
    """Squeeze a libpq error into one clause: no hint lines, no severity, no final stop.

    libpq writes one line per failed host plus indented hint lines ("Is the server
    running...?"); psycopg prefixes "connection failed: " and, when several hosts were
    tried, adds one "- host: ..." line per attempt.
    """
    lines = [line for line in reason.splitlines() if line.strip() and not line[0].isspace()]
    # psycopg lists every host tried as "- host: ..., hostaddr: ...: connection failed: why".
    attempts = [line.rpartition("connection failed: ")[2] for line in lines if line[0] == "-"]
    lines = attempts or lines
    text = "; ".join(" ".join(line.split()) for line in lines) or reason.strip()
    text = _SEVERITY.sub("", text.removeprefix("connection failed: "))
    return text.rstrip(" .;")


def _has_secret(conninfo: str) -> bool:
    """Tell whether a (possibly malformed) conninfo string carries a secret."""
    return bool(_KV_SECRET.search(conninfo) or _URI_USERINFO.search(conninfo))


def _redact_quoted(match: re.Match[str]) -> str:
    """Hide a quoted fragment of an error message unless it is a lone punctuation mark."""
    return match[0] if _PUNCTUATION.fullmatch(match[1]) else f'"{_REDACTED}"'


def _secrets(conninfo: str) -> list[str]:
    """Collect the secret values that could appear in an error message."""
    found = [os.environ.get("PGPASSWORD", "")]
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        params = {}
    found.extend(str(params.get(key) or "") for key in _SECRET_KEYS)
    return [s for s in found if s]


def redact(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """Remove passwords from ``text``: ``password=...`` pairs, URI userinfo, known values."""
    text = _KV_SECRET.sub(lambda m: m["head"] + _REDACTED, text)
    text = _URI_USERINFO.sub(lambda m: m["head"] + _REDACTED, text)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    return text


def sqlalchemy_engine(
    conninfo: str, *, application_name: str = "pgaudit-tool", **engine_options: Any
) -> sqlalchemy.Engine:
    """Create a SQLAlchemy engine (psycopg 3 driver) connecting with a libpq ``conninfo``.

    The conninfo (key=value, URI or empty for the libpq environment) is handed as is to
    ``psycopg.connect`` through a ``do_connect`` hook, so no password ends up in the engine's
    URL and libpq keeps its own precedence rules. SQLAlchemy's psycopg dialect still supplies
    its adapters. ``application_name`` is a fallback, as in :func:`connect`. A malformed
    conninfo raises :class:`ConnectionFailed` here; failures to reach the server surface as
    ``sqlalchemy.exc.OperationalError`` on first use. ``engine_options`` go to
    ``sqlalchemy.create_engine`` (e.g. ``poolclass``).
    SQLAlchemy is imported lazily to keep CLI start-up fast.
    """
    import sqlalchemy

    normalized = normalize_uri(conninfo)
    try:
        resolved = make_conninfo(normalized, fallback_application_name=application_name)
    except psycopg.ProgrammingError as exc:
        raise _connection_failed(exc, normalized) from None
    engine = sqlalchemy.create_engine("postgresql+psycopg://", **engine_options)

    def _use_conninfo(
        dialect: Any, conn_rec: Any, cargs: list[Any], cparams: dict[str, Any]
    ) -> None:
        """Replace the dialect's empty DSN argument with the real conninfo."""
        cargs[:] = [resolved]
        cparams.pop("conninfo", None)

    sqlalchemy.event.listen(engine, "do_connect", _use_conninfo)
    return engine
