from django.contrib import admin

from pgaudit_tool.contrib.django.admin import AuditHistoryMixin
from tests.djangoapp.models import Order


@admin.register(Order)
class OrderAdmin(AuditHistoryMixin, admin.ModelAdmin):  # type: ignore[misc]
    list_display = ("id", "customer", "amount")
