"""Locate the SQL sources and alembic migrations shipped with the package.

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


def sql_files(revision_dir: str) -> list[Path]:
    """The ``.sql`` files of one schema revision (``sql/<revision_dir>/``), in execution order."""
    folder = data_dir("sql") / revision_dir
    files = sorted(folder.glob("*.sql"))
    if not files:
        raise AuditError(f"no SQL files in {folder}")
    return files


def read_sql(revision_dir: str) -> str:
    """The SQL of one schema revision, its files concatenated in order."""
    return "\n".join(path.read_text(encoding="utf-8") for path in sql_files(revision_dir))
