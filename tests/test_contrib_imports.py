"""The integrations add nothing to ``import pgaudit_tool``: no framework is imported, no alembic
operation is registered, until a contrib module is imported."""

from __future__ import annotations

import json
import subprocess
import sys


def _loaded_after(code: str) -> list[str]:
    probe = (
        f"import sys\n{code}\n"
        "import json; print(json.dumps(sorted(m for m in ('django', 'starlette', 'fastapi', "
        "'sqlalchemy', 'alembic', 'alembic.operations', 'pgaudit_tool.contrib.alembic', "
        "'pgaudit_tool.contrib.django', 'pgaudit_tool.contrib.asgi') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))


def test_core_import_loads_no_framework() -> None:
    assert _loaded_after("import pgaudit_tool, pgaudit_tool.contrib") == []
    assert _loaded_after("from pgaudit_tool import Audit, acting_as, track_sessions") == []


def test_contrib_modules_load_only_their_own() -> None:
    assert "django" not in _loaded_after("import pgaudit_tool.contrib.alembic")
    assert _loaded_after("import pgaudit_tool.contrib.asgi") == ["pgaudit_tool.contrib.asgi"]


def test_operations_registered_by_importing_the_module() -> None:
    code = (
        "from alembic.operations import Operations\n"
        "before = hasattr(Operations, 'enable_audit')\n"
        "import pgaudit_tool.contrib.alembic\n"
        "print(before, all(hasattr(Operations, n) for n in "
        "('enable_audit', 'disable_audit', 'refresh_audit')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
