"""Locate the SQL sources and alembic migrations shipped with the package.

``sql/schema/<revision>_<name>.sql`` runs once, when its alembic revision is applied (tables,
indexes, data changes); ``sql/functions/*.sql`` is re-applied as a whole after the pending
revisions of every install or upgrade (functions, views, triggers: CREATE OR REPLACE).

In a wheel they are installed inside the package as ``pgaudit_tool/_data/{sql,migrations}``
(see ``[tool.hatch.build.targets.wheel.force-include]`` in pyproject.toml). In a source checkout
or an editable install they are the top-level ``sql/`` and ``migrations/`` folders.
"""

from __future__ import annotations

from pathlib import Path

from pgaudit_tool.errors import AuditError

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder ``sql`` or ``migrations``, wherever this installation keeps it."""
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise AuditError(
        f"the {name!r} folder of pgaudit_tool is missing from this installation",
        hint="Reinstall the package; a wheel must contain pgaudit_tool/_data/.",
    )


def schema_file(revision: str) -> Path:
    """The once-only SQL of one schema revision: ``sql/schema/<revision>_*.sql``."""
    folder = data_dir("sql") / "schema"
    found = sorted(folder.glob(f"{revision}_*.sql"))
    if len(found) != 1:
        raise AuditError(
            f"expected one SQL file for revision {revision} in {folder}, found {len(found)}"
        )
    return found[0]


def schema_files() -> list[Path]:
    """The once-only SQL of every schema revision, in revision order."""
    return sorted((data_dir("sql") / "schema").glob("*.sql"))


def function_files() -> list[Path]:
    """The SQL re-applied by every install or upgrade (functions, views, triggers), in order."""
    files = sorted((data_dir("sql") / "functions").glob("*.sql"))
    if not files:
        raise AuditError(f"no SQL files in {data_dir('sql') / 'functions'}")
    return files


def read_sql(files: list[Path]) -> str:
    """The text of SQL files, concatenated in order."""
    return "\n".join(path.read_text(encoding="utf-8") for path in files)
