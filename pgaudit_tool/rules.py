"""Rules for the watcher: which detectors run, with which thresholds, and what they trigger.

A rules file is TOML (read with :mod:`tomllib`)::

    [baseline]
    window = "30 days"            # what "usual" means for the learning detectors

    [detector.mass_change]        # the detector's default rule, named after it
    min_rows = 500
    severity = "critical"

    [[rule]]                      # more rules: a detector narrowed and tuned
    name = "staff-password-changed"
    detector = "sensitive_column"
    table = "public.staff"
    columns = ["password"]
    actions = ["alert", "exec:/usr/local/bin/page-oncall"]

    [[guard]]                     # guards in the database (pgaudit-tool guard), applied by watch
    table = "public.payment"
    max_rows = 100

Every mistake is an :class:`InvalidInput` naming the file, the line and the key.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from pgaudit_tool.actions import Action, parse_action
from pgaudit_tool.errors import InvalidInput

SEVERITIES = ("info", "warning", "critical")
OPS = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

#: Each detector's settings and their defaults (the documented defaults: README "Watching").
DETECTORS: dict[str, dict[str, Any]] = {
    "mass_change": {
        "min_rows": 1000,
        "min_fraction": 0.2,
        "min_table_rows": 100,
        "severity": "warning",
    },
    "destructive": {"min_rows": 100, "severity": "critical"},
    "sensitive_column": {"columns": [], "old": None, "new": None, "severity": "critical"},
    "new_actor": {"min_history": None, "severity": "warning"},
    "off_hours": {
        "timezone": "UTC",
        "days": None,
        "hours": None,
        "min_baseline": 50,
        "severity": "warning",
    },
    "burst": {"window": "5 min", "factor": 10.0, "min_changes": 500, "severity": "warning"},
    "new_client": {"min_history": None, "severity": "warning"},
    "integrity": {"verify_interval": "1 day", "repeat_after": "1 day", "severity": "critical"},
}

_COMMON = {"enabled", "severity", "actions"}
_NARROWING = {"table", "tables", "ops", "actors", "roles"}
_RULE_ONLY = {"name", "detector"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$")
_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}  # fmt: skip


@dataclass(frozen=True)
class Rule:
    """One rule: a detector, the changes it looks at, its settings and its responses."""

    name: str
    detector: str
    settings: Mapping[str, Any]
    severity: str
    actions: tuple[Action, ...] = ()
    tables: tuple[str, ...] = ()
    ops: tuple[str, ...] = ()
    actors: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    section: tuple[str, ...] = ()

    def get(self, key: str) -> Any:
        return self.settings[key]

    def seconds(self, key: str) -> float:
        value = self.settings[key]
        return float(value) if isinstance(value, int | float) else parse_duration(value)

    def matches(
        self,
        *,
        table: str | None = None,
        op: str | None = None,
        actor: str | None = None,
        roles: Sequence[str | None] = (),
    ) -> bool:
        """Whether a change (or group of changes) is one this rule looks at."""
        if self.tables and (table is None or not _any_glob(self.tables, table)):
            return False
        if self.ops and op is not None and op not in self.ops:
            return False
        if self.actors and (actor is None or not _any_glob(self.actors, actor)):
            return False
        return not self.roles or any(r is not None and _any_glob(self.roles, r) for r in roles)


@dataclass(frozen=True)
class GuardSpec:
    """A ``[[guard]]`` of the rules file: applied to the database by the watcher at start."""

    table: str
    max_rows: int
    ops: tuple[str, ...] = ("UPDATE", "DELETE")
    except_roles: tuple[str, ...] = ()
    section: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rules:
    """The rules in force: every enabled rule, the baseline window and the guards."""

    rules: tuple[Rule, ...]
    baseline: timedelta = timedelta(days=30)
    guards: tuple[GuardSpec, ...] = ()
    source: str = "defaults"
    lines: Mapping[tuple[str, ...], Mapping[str, int]] = field(default_factory=dict)

    def of(self, detector: str) -> list[Rule]:
        return [r for r in self.rules if r.detector == detector]


def parse_duration(value: Any) -> float:
    """Seconds in ``"5 min"``, ``"30 days"``, ``"1h"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError('a duration, e.g. "5 min" or "30 days"')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value.lower())
        if m and m.group(2) in _UNITS:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f'{value!r} is not a duration (e.g. "5 min", "2 hours", "30 days")')


def default_rules() -> Rules:
    """Every built-in detector with its defaults."""
    return _build({}, "defaults", {})


def load_rules(path: Path | str | None) -> Rules:
    """The rules of a TOML file (None: the defaults). InvalidInput names the line and key."""
    if path is None:
        return default_rules()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read rules file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"rules file {path} is not UTF-8 text") from None
    return parse_rules(text, str(path))


def parse_rules(text: str, source: str = "<rules>") -> Rules:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{source}: not valid TOML: {exc}") from None
    return _build(doc, source, _key_lines(text))


# --------------------------------------------------------------------------- building


def rule_error(
    rules: Rules, section: tuple[str, ...], key: str | None, message: str
) -> InvalidInput:
    """An InvalidInput naming the file, line and key of a rule or guard (checks made later,
    against the database: an unknown table)."""
    where = rules.lines.get(section, {})
    line = where.get(key or "", where.get("", None))
    at = f", line {line}" if line else ""
    label = "[" + ".".join(section) + "]"
    if len(section) == 2 and section[0] in ("rule", "guard"):
        label = f"[[{section[0]}]] #{int(section[1]) + 1}"
    return InvalidInput(f"{rules.source}{at}: {label}, key {key!r}: {message}")


class _Fail(Exception):
    def __init__(self, section: tuple[str, ...], key: str | None, message: str) -> None:
        super().__init__(message)
        self.section, self.key, self.message = section, key, message


def _build(
    doc: Mapping[str, Any], source: str, lines: dict[tuple[str, ...], dict[str, int]]
) -> Rules:
    try:
        return _build_checked(doc, source, lines)
    except _Fail as fail:
        where = lines.get(fail.section, {})
        line = where.get(fail.key or "", where.get("", None))
        label = _label(fail.section, doc)
        at = f", line {line}" if line else ""
        key = f", key {fail.key!r}" if fail.key else ""
        raise InvalidInput(
            f"{source}{at}: {label}{key}: {fail.message}",
            hint="See the README, 'Watching', for the rules file format.",
        ) from None


def _label(section: tuple[str, ...], doc: Mapping[str, Any]) -> str:
    if section[:1] in (("rule",), ("guard",)) and len(section) == 2:
        idx = int(section[1])
        entries = doc.get(section[0]) or []
        name = (
            entries[idx].get("name")
            if idx < len(entries) and isinstance(entries[idx], dict)
            else None
        )
        return f"[[{section[0]}]] #{idx + 1}" + (f" ({name!r})" if isinstance(name, str) else "")
    return "[" + ".".join(section) + "]" if section else "top level"


def _build_checked(
    doc: Mapping[str, Any], source: str, lines: dict[tuple[str, ...], dict[str, int]]
) -> Rules:
    for key in doc:
        if key not in ("baseline", "detector", "rule", "guard"):
            raise _Fail((), key, "unknown section (use baseline, detector, rule or guard)")
    baseline = _baseline(_table(doc, "baseline", ()))
    detectors = _table(doc, "detector", ())
    for name in detectors:
        if name not in DETECTORS:
            raise _Fail(("detector",), name, _unknown_detector(name))
    rules: list[Rule] = []
    for name, defaults in DETECTORS.items():
        section = ("detector", name)
        given = _table(detectors, name, section)
        rule = _rule(name, name, defaults, given, section, allow_narrowing=False)
        if rule is not None:
            rules.append(rule)
    names = {r.name for r in rules}
    for idx, entry in enumerate(_array(doc, "rule")):
        section = ("rule", str(idx))
        rule = _custom_rule(entry, section, detectors)
        if rule is not None:
            if rule.name in names:
                raise _Fail(section, "name", f"a rule named {rule.name!r} already exists")
            names.add(rule.name)
            rules.append(rule)
    guards = tuple(_guard(entry, ("guard", str(i))) for i, entry in enumerate(_array(doc, "guard")))
    return Rules(tuple(rules), baseline, guards, source, lines)


def _table(doc: Mapping[str, Any], key: str, parent: tuple[str, ...]) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise _Fail(parent, key, "must be a table ([section])")
    return value


def _array(doc: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _Fail((), key, f"must be an array of tables ([[{key}]])")
    return value


def _baseline(given: Mapping[str, Any]) -> timedelta:
    for key in given:
        if key != "window":
            raise _Fail(("baseline",), key, "unknown key (use window)")
    try:
        seconds = parse_duration(given.get("window", "30 days"))
    except ValueError as exc:
        raise _Fail(("baseline",), "window", str(exc)) from None
    return timedelta(seconds=seconds)


def _unknown_detector(name: str) -> str:
    return f"unknown detector {name!r} (known: {', '.join(DETECTORS)})"


def _custom_rule(
    entry: Mapping[str, Any], section: tuple[str, ...], detectors: Mapping[str, Any]
) -> Rule | None:
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _Fail(section, "name", "every [[rule]] needs a name (text)")
    detector = entry.get("detector")
    if not isinstance(detector, str):
        raise _Fail(section, "detector", "every [[rule]] needs a detector")
    if detector not in DETECTORS:
        raise _Fail(section, "detector", _unknown_detector(detector))
    # A rule starts from its detector's settings in the file, then the built-in defaults.
    inherited = {**DETECTORS[detector], **detectors.get(detector, {})}
    inherited.pop("enabled", None)
    inherited.pop("actions", None)
    body = {k: v for k, v in entry.items() if k not in _RULE_ONLY}
    return _rule(name, detector, inherited, body, section, allow_narrowing=True)


def _rule(
    name: str,
    detector: str,
    defaults: Mapping[str, Any],
    given: Mapping[str, Any],
    section: tuple[str, ...],
    *,
    allow_narrowing: bool,
) -> Rule | None:
    allowed = set(DETECTORS[detector]) | _COMMON | (_NARROWING if allow_narrowing else set())
    for key in given:
        if key not in allowed:
            extra = "" if allow_narrowing or key not in _NARROWING else " (narrow in a [[rule]])"
            raise _Fail(section, key, f"unknown key for detector {detector}{extra}")
    enabled = given.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _Fail(section, "enabled", "must be true or false")
    settings = {k: given.get(k, defaults.get(k, v)) for k, v in DETECTORS[detector].items()}
    for key, value in settings.items():
        try:
            settings[key] = _setting(detector, key, value)
        except ValueError as exc:
            raise _Fail(section, key, str(exc)) from None
    if not enabled:
        return None
    try:
        actions = tuple(parse_action(a) for a in _strings(given.get("actions", ["alert"])))
    except ValueError as exc:
        raise _Fail(section, "actions", str(exc)) from None
    except InvalidInput as exc:
        raise _Fail(section, "actions", exc.message) from None
    narrowing = {}
    for key in ("tables", "ops", "actors", "roles"):
        try:
            narrowing[key] = tuple(_strings(given.get(key, [])))
        except ValueError as exc:
            raise _Fail(section, key, str(exc)) from None
    if "table" in given:
        if not isinstance(given["table"], str):
            raise _Fail(section, "table", "must be a table name (text)")
        narrowing["tables"] = (given["table"], *narrowing["tables"])
    ops = tuple(o.upper() for o in narrowing["ops"])
    for op in ops:
        if op not in OPS:
            raise _Fail(section, "ops", f"unknown operation {op!r} (use {', '.join(OPS)})")
    if detector == "sensitive_column" and allow_narrowing:
        if not settings["columns"]:
            raise _Fail(section, "columns", "a sensitive_column rule needs columns")
        if not narrowing["tables"]:
            raise _Fail(section, "table", "a sensitive_column rule needs a table")
    return Rule(
        name=name,
        detector=detector,
        settings=settings,
        severity=settings["severity"],
        actions=actions,
        tables=narrowing["tables"],
        ops=ops,
        actors=narrowing["actors"],
        roles=narrowing["roles"],
        section=section,
    )


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of names (text)")
    return value


def _setting(detector: str, key: str, value: Any) -> Any:
    if value is None:
        return None
    if key == "severity":
        if value not in SEVERITIES:
            raise ValueError(f"must be one of {', '.join(SEVERITIES)}")
        return value
    if key in ("min_rows", "min_table_rows", "min_changes", "min_baseline"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("must be a whole number of at least 1")
        return value
    if key in ("min_fraction", "factor"):
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError("must be a number above 0")
        if key == "min_fraction" and value > 1:
            raise ValueError("must be a fraction between 0 and 1")
        return float(value)
    if key in ("window", "min_history", "verify_interval", "repeat_after"):
        parse_duration(value)
        return value
    if key == "columns":
        return tuple(_strings(value))
    if key == "timezone":
        return _timezone(value)
    if key == "days":
        days = [d.lower()[:3] for d in _strings(value)]
        for d in days:
            if d not in DAYS:
                raise ValueError(f"unknown day {d!r} (use {', '.join(DAYS)})")
        return tuple(days)
    if key == "hours":
        return _hours(value)
    return value  # old / new: JSON values compared as they are


def _timezone(value: Any) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(value, str):
        raise ValueError('must be a time zone name, e.g. "Europe/Paris"')
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


def _hours(value: Any) -> tuple[int, int]:
    """``"08:00-19:00"`` as minutes of the day (start inclusive, end exclusive)."""
    m = re.match(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$", str(value))
    if not isinstance(value, str) or not m:
        raise ValueError('must be a range of hours, e.g. "08:00-19:00"')
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59:
        raise ValueError(f"{value!r} is not a valid range of hours")
    return h1 * 60 + m1, h2 * 60 + m2


def _guard(entry: Mapping[str, Any], section: tuple[str, ...]) -> GuardSpec:
    for key in entry:
        if key not in ("table", "max_rows", "ops", "except_roles"):
            raise _Fail(section, key, "unknown key (use table, max_rows, ops, except_roles)")
    table = entry.get("table")
    if not isinstance(table, str) or not table:
        raise _Fail(section, "table", "every [[guard]] needs a table")
    max_rows = entry.get("max_rows")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise _Fail(section, "max_rows", "must be a whole number of at least 1")
    try:
        ops = tuple(o.upper() for o in _strings(entry.get("ops", ["UPDATE", "DELETE"])))
        roles = tuple(_strings(entry.get("except_roles", [])))
    except ValueError as exc:
        raise _Fail(section, "ops" if "ops" in entry else "except_roles", str(exc)) from None
    return GuardSpec(table, max_rows, ops, roles, section)


def _any_glob(patterns: Sequence[str], value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


# --------------------------------------------------------------------------- line numbers

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)\s*=")


def _key_lines(text: str) -> dict[tuple[str, ...], dict[str, int]]:
    """Where each section and key sits: {section: {"": header line, key: line}}."""
    found: dict[tuple[str, ...], dict[str, int]] = {(): {}}
    counts: dict[str, int] = {}
    section: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            path = tuple(p.strip().strip("\"'") for p in header.group(2).split("."))
            if header.group(1) == "[[":
                idx = counts.get(path[0], 0)
                counts[path[0]] = idx + 1
                path = (path[0], str(idx))
            section = path
            found.setdefault(section, {})[""] = number
            if len(path) == 2 and path[0] == "detector":
                found.setdefault(("detector",), {}).setdefault(path[1], number)
            continue
        key = _KEY.match(line)
        if key:
            found.setdefault(section, {}).setdefault(key.group(1).strip("\"'"), number)
    return found
