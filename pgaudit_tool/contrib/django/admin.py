"""A read-only "Database history" page in the Django admin for objects of audited models.

    from django.contrib import admin
    from pgaudit_tool.contrib.django.admin import AuditHistoryMixin

    @admin.register(Order)
    class OrderAdmin(AuditHistoryMixin, admin.ModelAdmin):
        ...

The change form gets a "Database history" button; the page lists the object's recorded changes,
newest first: when, who (actor and login role), the operation, each changed column's before and
after, and the ``pgaudit-tool revert`` command a DBA would run to undo it (shown, never run: a
revert is the DBA's decision, checked for conflicts by the CLI). It needs the view (or change)
permission on the model, and the database role Django uses must be able to read the log
(``GRANT pgaudit_reader TO <role>``); otherwise the page says so. Single-column keys only.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, connections, router, transaction
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import path

_QUERY = (
    "SELECT id, at, op, actor, db_user, context, old, new, txid::text"
    " FROM audit.history WHERE relid = pg_catalog.to_regclass(%s) AND pk = %s::jsonb"
    " ORDER BY id DESC LIMIT %s"
)


class AuditHistoryMixin:
    """ModelAdmin mixin adding ``<object_id>/pgaudit-history/``."""

    pgaudit_history_limit = 200
    pgaudit_history_template = "pgaudit/history.html"
    change_form_template = "pgaudit/change_form.html"

    def get_urls(self) -> list[Any]:
        urls: list[Any] = super().get_urls()  # type: ignore[misc]
        opts = self.model._meta  # type: ignore[attr-defined]
        view = self.admin_site.admin_view(self.pgaudit_history_view)  # type: ignore[attr-defined]
        name = f"{opts.app_label}_{opts.model_name}_pgaudit_history"
        return [path("<path:object_id>/pgaudit-history/", view, name=name), *urls]

    def pgaudit_history_view(self, request: Any, object_id: str) -> TemplateResponse:
        admin: Any = self
        model = admin.model
        obj = admin.get_object(request, unquote(object_id))
        if not admin.has_view_or_change_permission(request, obj):
            raise PermissionDenied
        pk_field = model._meta.pk
        if obj is not None:
            key = pk_field.get_db_prep_value(obj.pk, connections[self._alias()])
        else:  # deleted: its history is still there
            try:
                key = pk_field.to_python(unquote(object_id))
            except Exception as exc:
                raise Http404(f"not a key of {model._meta.verbose_name}") from exc
        changes, problem = self._changes(model, pk_field.column, key)
        context = {
            **admin.admin_site.each_context(request),
            "opts": model._meta,
            "object": obj,
            "object_id": object_id,
            "changes": changes,
            "problem": problem,
            "limit": self.pgaudit_history_limit,
            "title": f"Database history: {obj if obj is not None else object_id}",
        }
        return TemplateResponse(request, self.pgaudit_history_template, context)

    def _alias(self) -> str:
        alias: str = router.db_for_read(self.model)  # type: ignore[attr-defined]
        return alias

    def _changes(self, model: Any, column: str, key: Any) -> tuple[list[dict[str, Any]], str]:
        alias = self._alias()
        connection = connections[alias]
        table = connection.ops.quote_name(model._meta.db_table)
        pk_json = json.dumps({column: key}, default=str)
        try:
            with transaction.atomic(using=alias), connection.cursor() as cursor:
                cursor.execute(_QUERY, [table, pk_json, self.pgaudit_history_limit])
                names = [c.name for c in cursor.description]
                rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except DatabaseError as exc:
            return [], (
                f"The audit log cannot be read with this database connection ({exc}). "
                "Is the audit schema installed, and may Django's role read it "
                "(GRANT pgaudit_reader TO the role)?"
            )
        return [_presented(row) for row in rows], ""


def _presented(row: dict[str, Any]) -> dict[str, Any]:
    old, new = _image(row["old"]), _image(row["new"])
    if row["op"] == "UPDATE":
        columns = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
    else:
        columns = sorted({*old, *new})
    row["diff"] = [
        {"column": c, "before": _shown(old, c), "after": _shown(new, c)} for c in columns
    ]
    row["context"] = _image(row["context"])
    row["revert"] = f"pgaudit-tool revert --change {row['id']} --dry-run"
    row["revert_transaction"] = f"pgaudit-tool revert --txid {row['txid']} --dry-run"
    return row


def _image(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value) if isinstance(value, dict) else {}


def _shown(image: dict[str, Any], column: str) -> str:
    if column not in image:
        return ""
    value = image[column]
    return "NULL" if value is None else value if isinstance(value, str) else json.dumps(value)
