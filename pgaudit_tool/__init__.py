"""pgaudit_tool: database-level change capture for PostgreSQL.

The public API is :class:`Audit` (one method per CLI command), the attribution helpers
:func:`audit_context`, :func:`set_actor`, :func:`track_sessions` and :func:`acting_as`, and the exception
hierarchy rooted at :class:`AuditError`.
"""

from pgaudit_tool.api import Audit, EnableResult, InstallResult
from pgaudit_tool.context import acting_as, audit_context, set_actor, track_sessions
from pgaudit_tool.errors import AuditError

__version__ = "0.1.0"

__all__ = [
    "Audit",
    "AuditError",
    "EnableResult",
    "InstallResult",
    "__version__",
    "acting_as",
    "audit_context",
    "set_actor",
    "track_sessions",
]
