"""The exception hierarchy: every error the library raises derives from AuditError.

The CLI maps each class to a documented exit code (see ``pgaudit_tool.cli``).
"""

from __future__ import annotations


class AuditError(Exception):
    """Base class of every pgaudit_tool error. ``hint`` tells the user what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nHint: {self.hint}"


class ConnectionFailed(AuditError):
    """The database could not be reached or refused the login."""

    exit_code = 3


class NotInstalled(AuditError):
    """The audit schema is missing or older than this version of the tool."""

    exit_code = 4


class InvalidInput(AuditError):
    """Bad user input: unknown table, bad identifier, bad timestamp, bad key."""

    exit_code = 2


class TableNotSuitable(AuditError):
    """A table cannot be audited as asked (no primary key or replica identity, not a table)."""

    exit_code = 2


class PermissionDenied(AuditError):
    """The connected role lacks a privilege the operation needs."""

    exit_code = 5


class DatabaseError(AuditError):
    """Any other error reported by PostgreSQL, with its SQLSTATE."""

    exit_code = 1


class LockTimeout(AuditError):
    """A lock the operation needs was not granted within lock_timeout: nothing was changed."""

    exit_code = 8


class IntegrityProblem(AuditError):
    """verify found the audit log tampered with, or doctor found auditing not intact."""

    exit_code = 7


class RevertConflict(AuditError):
    """A revert would overwrite later work (``on_conflict="abort"``), or rows changed while it
    ran: nothing was changed. ``conflicts`` lists the conflicting rows when known."""

    exit_code = 6

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        conflicts: list[dict[str, object]] | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.conflicts = conflicts or []


class WatcherBusy(AuditError):
    """Another watcher already watches this database (one watcher per database)."""

    exit_code = 9


class GuardRefused(DatabaseError):
    """A statement was refused by a guard (``audit.guard``, SQLSTATE PGA01): it would have changed
    more rows of a guarded table than its limit allows, and changed nothing."""

    exit_code = 1
