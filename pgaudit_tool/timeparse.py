"""Instants typed by people: ISO-8601, PostgreSQL's own words, and "N units ago".

Parsing is done by the server (``timestamptz`` input), so the rules are PostgreSQL's:
``2026-11-25T14:00:00+01:00``, ``2026-11-25 14:00`` (no zone: the session's TimeZone),
``yesterday``, ``today``, ``now``. On top of that, relative forms ``2 hours ago``,
``90 minutes ago``, ``1.5 days ago``, ``3 weeks ago``.

Only instants between the years 1 and 9999 are times (Python's datetime range, with a day to
spare for time zones): ``infinity``, ``-infinity``, BC dates and years past 9999 are refused
with InvalidInput, like text that is not a time at all.
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
# The instant when it lies in the range a datetime holds in any time zone (else NULL), and
# whether it does.
_CHECK = (
    "SELECT CASE WHEN ok THEN t END, ok FROM (SELECT t, t BETWEEN '0001-01-02 00:00:00+00'"
    " AND '9999-12-30 00:00:00+00' FROM (SELECT {}) AS x(t)) AS y(t, ok)"
)


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
                query, arg = _CHECK.format("now() - %s::interval"), f"{match[1]} {unit}"
            else:
                query, arg = _CHECK.format("%s::timestamptz"), text
            row = conn.execute(query, (arg,)).fetchone()
    except (psycopg.DataError, psycopg.ProgrammingError) as exc:
        reason = exc.diag.message_primary or str(exc) or type(exc).__name__
        raise InvalidInput(f"{text!r} is not a time: {reason}", hint=_HINT) from exc
    if row is None or not row[1]:
        raise InvalidInput(
            f"{text!r} is not a usable time: infinite, or outside 0001-01-02 to 9999-12-30 (UTC)",
            hint=_HINT,
        )
    value = row[0]
    if not isinstance(value, datetime):
        raise InvalidInput(f"{text!r} is not a time", hint=_HINT)
    return value
