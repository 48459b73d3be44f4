"""Instants typed by people: ISO-8601, PostgreSQL's own words, ``@EPOCH`` and "INTERVAL ago".

Parsing is done by the server, so the rules are PostgreSQL's:

* ``timestamptz`` input: ``2026-11-25T14:00:00+01:00``, ``2026-11-25 14:00`` (no zone: the
  session's TimeZone), ``yesterday``, ``today``, ``now``;
* any ``interval`` input followed by ``ago``, counted back from ``now()``: ``2 hours ago``,
  ``2 hours 30 minutes ago``, ``1h30m ago``, ``90 min ago``, ``1.5 days ago``, ``P1DT2H ago``;
* ``@`` and seconds since the Unix epoch, with or without a fraction: ``@1700000000``,
  ``@1700000000.25`` (``to_timestamp``).

Only instants between the years 1 and 9999 are times (Python's datetime range, with a day to
spare for time zones): ``infinity``, ``-infinity``, BC dates and years past 9999 are refused
with InvalidInput, like text that is not a time at all. The InvalidInput names the option the
text was given to when it is a :class:`TimeText` (the CLI's time options make them).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import psycopg

from pgaudit_tool.errors import InvalidInput

# The interval before a final "ago" (PostgreSQL's interval input reads the rest), and the
# seconds after an "@".
_AGO = re.compile(r"^\s*(\S.*?)\s+ago\s*$", re.IGNORECASE | re.DOTALL)
_EPOCH = re.compile(r"^\s*@\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*$")
FORMS = (
    "ISO-8601 (2026-11-25T14:00:00+01:00; without a zone, the session's TimeZone),"
    " PostgreSQL words (now, today, yesterday), an interval followed by 'ago'"
    " ('2 hours 30 minutes ago', '1h30m ago', '90 min ago', '1 day ago')"
    " or @ and seconds since the Unix epoch (@1700000000, @1700000000.5)"
)
_HINT = f"Use {FORMS}."
# The instant when it lies in the range a datetime holds in any time zone (else NULL), and
# whether it does.
_CHECK = (
    "SELECT CASE WHEN ok THEN t END, ok FROM (SELECT t, t BETWEEN '0001-01-02 00:00:00+00'"
    " AND '9999-12-30 00:00:00+00' FROM (SELECT {}) AS x(t)) AS y(t, ok)"
)


class TimeText(str):
    """The text of a time together with the option it was given to (``--since``), for errors."""

    option: str

    def __new__(cls, text: str, option: str) -> TimeText:
        self = super().__new__(cls, text)
        self.option = option
        return self


def instant(conn: psycopg.Connection[Any], text: str) -> datetime:
    """The instant ``text`` names, as the server reads it; InvalidInput when it is not one."""
    label = f"{text.option} " if isinstance(text, TimeText) else ""
    text = str(text)
    if not text or not text.strip():
        raise InvalidInput(f"{label}an empty string is not a time", hint=_HINT)
    if ago := _AGO.match(text):
        query, arg = _CHECK.format("now() - %s::interval"), ago[1]
    elif epoch := _EPOCH.match(text):
        query, arg = _CHECK.format("to_timestamp(%s::double precision)"), epoch[1]
    else:
        query, arg = _CHECK.format("%s::timestamptz"), text
    try:
        with conn.transaction():
            row = conn.execute(query, (arg,)).fetchone()
    except (psycopg.DataError, psycopg.ProgrammingError) as exc:
        reason = exc.diag.message_primary or str(exc) or type(exc).__name__
        raise InvalidInput(f"{label}{text!r} is not a time: {reason}", hint=_HINT) from exc
    if row is None or not row[1]:
        raise InvalidInput(
            f"{label}{text!r} is not a usable time: infinite, or outside 0001-01-02 to"
            " 9999-12-30 (UTC)",
            hint=_HINT,
        )
    value = row[0]
    if not isinstance(value, datetime):
        raise InvalidInput(f"{label}{text!r} is not a time", hint=_HINT)
    return value
