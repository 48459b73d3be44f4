"""Views that write in every way a project does: ORM, raw SQL, atomic blocks, two databases."""

from __future__ import annotations

import threading
from typing import Any

from django.db import connections, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse

from pgaudit_tool.contrib.django import context
from tests.djangoapp.models import Order


class Boom(Exception):
    pass


def context_hook(request: HttpRequest) -> dict[str, Any]:
    tenant = request.headers.get("X-Tenant")
    return {"tenant": tenant} if tenant else {}


def create(request: HttpRequest) -> JsonResponse:
    order = Order.objects.create(
        customer=request.POST["customer"], amount=int(request.POST["amount"])
    )
    return JsonResponse({"id": order.pk})


async def acreate(request: HttpRequest) -> JsonResponse:
    """An async view: the ORM's async API runs the write in a worker thread."""
    order = await Order.objects.acreate(
        customer=request.POST["customer"], amount=int(request.POST["amount"])
    )
    return JsonResponse({"id": order.pk})


def raw_update(request: HttpRequest, pk: int) -> HttpResponse:
    with connections["default"].cursor() as cursor:
        cursor.execute("UPDATE shop_order SET amount = amount + 1 WHERE id = %s", [pk])
        cursor.execute(
            "UPDATE shop_order SET customer = customer || '%' WHERE id = " + str(int(pk))
        )
    return HttpResponse("ok")


def atomic_then_fail(request: HttpRequest) -> HttpResponse:
    with transaction.atomic():
        Order.objects.create(customer="doomed", amount=1)
        raise Boom("rolled back")


def write_then_fail(request: HttpRequest) -> HttpResponse:
    Order.objects.create(customer="half-done", amount=2)
    raise Boom("after a write")


def with_ticket(request: HttpRequest, pk: int) -> HttpResponse:
    with context(ticket="OPS-7"), transaction.atomic():
        Order.objects.filter(pk=pk).update(amount=70)
        Order.objects.filter(pk=pk).update(customer="ticketed")
    return HttpResponse("ok")


def both_databases(request: HttpRequest) -> HttpResponse:
    Order.objects.using("default").create(customer="here", amount=1)
    Order.objects.using("other").create(customer="there", amount=2)
    with transaction.atomic(using="other"):
        Order.objects.using("other").filter(customer="there").update(amount=3)
    return HttpResponse("ok")


def bulk(request: HttpRequest) -> HttpResponse:
    Order.objects.bulk_create([Order(customer=f"bulk{i}", amount=i) for i in range(3)])
    with connections["default"].cursor() as cursor:
        cursor.executemany(
            "INSERT INTO shop_order (customer, amount) VALUES (%s, %s)",
            [("many1", 1), ("many2", 2)],
        )
    return HttpResponse("ok")


#: (reached, go): /pause waits on ``go`` between its two writes, after setting ``reached``.
PAUSE: tuple[threading.Event, threading.Event] = (threading.Event(), threading.Event())


def pause(request: HttpRequest, pk: int) -> HttpResponse:
    """Two autocommit writes with a pause between them (another client writes meanwhile)."""
    Order.objects.filter(pk=pk).update(amount=1)
    reached, go = PAUSE
    reached.set()
    if not go.wait(30):
        raise Boom("not released")
    Order.objects.filter(pk=pk).update(amount=2)
    return HttpResponse("ok")
