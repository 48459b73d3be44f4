"""Instants typed by people: ISO-8601, PostgreSQL's own words, and "N units ago".

Parsing is done by the server (``timestamptz`` input), so the rules are PostgreSQL's:
``2026-11-25T14:00:00+01:00``, ``2026-11-25 14:00`` (no zone: the session's TimeZone),
``yesterday``, ``today``, ``now``. On top of that, relative forms ``2 hours ago``,
``90 minutes ago``, ``1.5 days ago``, ``3 weeks ago``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import psycopg

from pgaudit_tool.errors import InvalidInput

_UNITS = {
    "s": "seconds", "sec": "seconds", "second": "seconds",
    "m": "minutes", "min": "minutes", "minute": "minutes",
    "h": "hours", "hr": "hours", "hour": "hours",
    "d": "days", "day": "days",
    "w": "weeks", "week": "weeks",
    "month": "months", "mon": "months",
    "y": "years", "year": "years",
}  # fmt: skip
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+?)s?\s+ago\s*$", re.IGNORECASE)
_HINT = "Use ISO-8601 (2026-11-25T14:00:00+01:00), PostgreSQL words (yesterday, today) or '2 hours ago'."


def instant(conn: psycopg.Connection[Any], text: str) -> datetime:
    """The instant ``text`` names, as the server reads it; InvalidInput when it is not one."""
    if not text or not text.strip():
        raise InvalidInput("an empty string is not a time", hint=_HINT)
    match = _RELATIVE.match(text)
    try:
        with conn.transaction():
            if match:
                unit = _UNITS.get(match[2].lower())
                if unit is None:
                    raise InvalidInput(f"unknown time unit {match[2]!r} in {text!r}", hint=_HINT)
                row = conn.execute(
                    "SELECT now() - %s::interval", (f"{match[1]} {unit}",)
                ).fetchone()
            else:
                row = conn.execute("SELECT %s::timestamptz", (text,)).fetchone()
    except (psycopg.DataError, psycopg.ProgrammingError) as exc:
        raise InvalidInput(
            f"{text!r} is not a time: {exc.diag.message_primary}", hint=_HINT
        ) from exc
    assert row is not None
    value = row[0]
    if not isinstance(value, datetime):
        raise InvalidInput(f"{text!r} is not a time", hint=_HINT)
    return value
