"""Where to connect, and how: the connection rules shared by every command.

Precedence, as in the PostgreSQL client tools:

1. an explicit ``--dsn`` (key=value conninfo or URI);
2. the libpq environment (``PGHOST``, ``PGSERVICE``, ``PGUSER``, ...): libpq applies its
   own rules, including the service file and ``.pgpass``;
3. ``DATABASE_URL``, the twelve-factor convention;
4. libpq's built-in defaults (local socket, current OS user).

Parameters given one by one (psql's ``-h``, ``-p``, ``-U``, ``-d``) override the same
parameters of whichever connection string that gives; libpq still fills the others from the
PG* variables, the service file and its defaults. A password comes from libpq's sources
(the conninfo, ``PGPASSWORD``, ``.pgpass``, the service file), else from a prompt on a terminal.

SQLAlchemy-style URIs (``postgresql+psycopg://``) are accepted everywhere and normalised to
``postgresql://`` because libpq rejects the ``+driver`` suffix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgaudit_tool.db import choose_lock_timeout, translated_errors
from pgaudit_tool.errors import ConnectionFailed, InvalidInput

if TYPE_CHECKING:
    import sqlalchemy

__all__ = [
    "LIBPQ_ENV_VARS",
    "PasswordPrompt",
    "connect",
    "login",
    "normalize_uri",
    "redact",
    "resolve_conninfo",
    "sqlalchemy_engine",
]


def _libpq_env_vars() -> frozenset[str]:
    """The environment variables this libpq reads as connection parameters (``PQconndefaults``),
    from libpq itself: a newer libpq's new variables count without a release of this tool."""
    return frozenset(o.envvar.decode() for o in pq.Conninfo.get_defaults() if o.envvar)


#: Environment variables libpq reads as connection parameters. Session-default variables such
#: as PGTZ or PGDATESTYLE do not choose a server, so they do not count. Empty values count as
#: unset.
LIBPQ_ENV_VARS: frozenset[str] = _libpq_env_vars()

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
    "Name the server with -h/-p/-U/-d or --dsn (a 'key=value' conninfo or a postgresql:// URI), "
    "or set the PG* variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGSERVICE, ...), or set "
    "DATABASE_URL; passwords come from PGPASSWORD, ~/.pgpass or a service file."
)
_REDACTED = "***"


def normalize_uri(dsn: str) -> str:
    """Rewrite a SQLAlchemy-style ``postgres[ql]+driver://`` prefix to ``postgresql://``.

    Anything else (key=value strings, plain URIs) is returned unchanged.
    """
    return _DRIVER_URI.sub("postgresql://", dsn, count=1)


def resolve_conninfo(
    dsn: str | None,
    environ: Mapping[str, str] | None = None,
    params: Mapping[str, str | None] | None = None,
) -> str:
    """Return the conninfo string to hand to libpq, applying the tool's precedence rules.

    An empty ``dsn`` counts as not given. The empty string result means "let libpq decide"
    (PG* variables, service file, .pgpass, built-in defaults). ``params``: connection
    parameters given one by one (``host``, ``port``, ``user``, ``dbname``: psql's -h, -p, -U,
    -d), which override the same parameters of the connection string; as in psql, a ``dbname``
    that is itself a connection string (``key=value`` or a URI) takes the place of ``dsn``.
    Raises :class:`ConnectionFailed` for a malformed connection string.
    """
    env = os.environ if environ is None else environ
    given = {key: value for key, value in (params or {}).items() if value}
    dbname = given.get("dbname")
    if dbname and _is_conninfo(dbname):
        if dsn:
            raise InvalidInput(
                "two connection strings: --dsn and -d/--dbname",
                hint="Give the connection string once; -d may also name just the database.",
            )
        dsn = given.pop("dbname")
    if dsn:
        base = normalize_uri(dsn)
    elif _libpq_env_set(env):
        base = ""
    else:
        base = normalize_uri(env.get("DATABASE_URL", ""))
    if not given:
        return base
    try:
        return make_conninfo(base, **given)
    except psycopg.ProgrammingError as exc:
        raise _connection_failed(exc, base) from None


def _is_conninfo(text: str) -> bool:
    """Whether libpq reads ``text``, given as a database name, as a connection string."""
    return (
        "=" in text
        or text.startswith(("postgresql://", "postgres://"))
        or bool(_DRIVER_URI.match(text))
    )


def _libpq_env_set(env: Mapping[str, str]) -> bool:
    """Tell whether any libpq connection variable is set to a non-empty value."""
    return any(env.get(name) for name in LIBPQ_ENV_VARS)


#: Asks the person at the terminal for the password of a user (the argument), as psql does.
PasswordPrompt = Callable[[str], str]


def connect(
    dsn: str | None,
    *,
    autocommit: bool = True,
    application_name: str = "pgaudit-tool",
    lock_timeout: str | None = None,
    password_prompt: PasswordPrompt | None = None,
) -> psycopg.Connection[Any]:
    """Open a psycopg connection following :func:`resolve_conninfo`.

    ``application_name`` is passed as libpq's ``fallback_application_name``: it applies only
    when neither the conninfo, ``PGAPPNAME`` nor the service file sets ``application_name``.
    ``lock_timeout``: for the connection's write transactions, see
    :func:`pgaudit_tool.db.choose_lock_timeout` (a bad value raises InvalidInput).
    ``password_prompt``: called when the server asks for a password none of libpq's sources
    gave (see :func:`login`).

    Raises :class:`~pgaudit_tool.errors.ConnectionFailed` (never a psycopg error) when the
    server cannot be reached, refuses the login, or the connection string is malformed.
    The message never contains a password.
    """
    conn, _conninfo = login(
        resolve_conninfo(dsn),
        application_name=application_name,
        lock_timeout=lock_timeout,
        password_prompt=password_prompt,
    )
    conn.autocommit = autocommit
    return conn


def login(
    conninfo: str,
    *,
    application_name: str = "pgaudit-tool",
    lock_timeout: str | None = None,
    password_prompt: PasswordPrompt | None = None,
) -> tuple[psycopg.Connection[Any], str]:
    """Connect with a resolved ``conninfo`` (autocommit); return the connection and the
    conninfo that logged in, with the password when one was prompted for (to open more
    connections to the same database without asking again).

    When the server asks for a password and none of libpq's sources (the conninfo,
    PGPASSWORD, the password file, the service file) gave one, ``password_prompt(user)`` is
    asked for it, once, as psql does; without a prompt the error says where a password goes.
    """
    try:
        conn = _open(conninfo, application_name)
    except _PasswordNeeded as need:
        if password_prompt is None:
            raise _password_needed(need.user) from None
        conninfo = make_conninfo(conninfo, password=password_prompt(need.user))
        conn = _open(conninfo, application_name)
    try:
        with translated_errors():
            choose_lock_timeout(conn, lock_timeout)  # in autocommit mode: see there
    except BaseException:
        conn.close()
        raise
    return conn, conninfo


class _PasswordNeeded(Exception):
    def __init__(self, user: str) -> None:
        self.user = user


def _open(conninfo: str, application_name: str) -> psycopg.Connection[Any]:
    try:
        full = make_conninfo(conninfo, fallback_application_name=application_name)
        return psycopg.connect(full, autocommit=True)
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
        pgconn = getattr(exc, "pgconn", None)
        if pgconn is not None and pgconn.needs_password:  # asked, and no source gave one
            raise _PasswordNeeded((pgconn.user or b"").decode(errors="replace")) from None
        raise _connection_failed(exc, conninfo) from None


def _password_needed(user: str) -> ConnectionFailed:
    return ConnectionFailed(
        f"Could not connect to the database: the server asks for the password of user "
        f'"{user}", and none was given.',
        hint="Set PGPASSWORD, or put the password in a password file (~/.pgpass, or the file "
        "PGPASSFILE names) or a service file entry (PGSERVICE); on a terminal, -W asks for it.",
    )


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
