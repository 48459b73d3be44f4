"""pgaudit_tool.contrib.django in a real Django project (settings configured here, the app in
tests/djangoapp) against real PostgreSQL databases: every assertion reads audit.history.

One pair of databases ("default" and "other") per server for the module; each test looks only
at the changes made after it started (``since``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pgaudit_tool import Audit
from tests.conftest import PgServer, fresh_database

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

_APPS = [
    "django.contrib.admin",
    "django.contrib.messages",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "pgaudit_tool.contrib.django",
    "tests.djangoapp",
]


def _database(dsn: str, **options: Any) -> dict[str, Any]:
    params = conninfo_to_dict(dsn)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params["dbname"],
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params.get("host", ""),
        "PORT": params.get("port", ""),
        "CONN_MAX_AGE": None,  # one connection reused by every request
        "ATOMIC_REQUESTS": False,
        "OPTIONS": {"application_name": "django-test", **options},
    }


def _point(alias: str, dsn: str, **options: Any) -> None:
    """Make the alias use ``dsn`` (settings are configured once per process)."""
    from django.db import connections

    if not settings.configured:
        settings.configure(
            SECRET_KEY="test",
            ALLOWED_HOSTS=["testserver"],
            ROOT_URLCONF="tests.djangoapp.urls",
            INSTALLED_APPS=_APPS,
            MIDDLEWARE=[
                "django.contrib.sessions.middleware.SessionMiddleware",
                "django.contrib.auth.middleware.AuthenticationMiddleware",
                "django.contrib.messages.middleware.MessageMiddleware",
                "pgaudit_tool.contrib.django.AuditMiddleware",
            ],
            TEMPLATES=[
                {
                    "BACKEND": "django.template.backends.django.DjangoTemplates",
                    "APP_DIRS": True,
                    "OPTIONS": {
                        "context_processors": [
                            "django.template.context_processors.request",
                            "django.contrib.auth.context_processors.auth",
                            "django.contrib.messages.context_processors.messages",
                        ]
                    },
                }
            ],
            DATABASES={
                "default": _database(dsn),
                "other": _database(dsn),
                # The default database again, with server-side parameter binding: one
                # statement per query, so the settings go in a statement of their own.
                "bound": _database(dsn, server_side_binding=True),
            },
            USE_TZ=True,
            PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
            PGAUDIT_TRUSTED_PROXY_HEADER="X-Forwarded-For",
            PGAUDIT_CONTEXT_HOOK="tests.djangoapp.views.context_hook",
            DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        )
        django.setup()
    connections[alias].close()
    settings.DATABASES[alias].update(_database(dsn, **options))
    connections[alias].settings_dict.update(_database(dsn, **options))


def _atomic_requests(on: bool) -> None:
    from django.db import connections

    settings.DATABASES["default"]["ATOMIC_REQUESTS"] = on
    connections["default"].settings_dict["ATOMIC_REQUESTS"] = on
    assert connections.settings["default"]["ATOMIC_REQUESTS"] is on


@pytest.fixture(scope="module")
def project(pg_server: PgServer) -> Iterator[dict[str, str]]:
    """Two databases, the audit schema in each, shop_order audited in each, Django's auth
    tables in "default"; yields {alias: dsn}."""
    with (
        fresh_database(pg_server, "dj_default") as default,
        fresh_database(pg_server, "dj_other") as other,
    ):
        _point("default", default)
        _point("other", other)
        _point("bound", default, server_side_binding=True)
        from django.core.management import call_command
        from django.db import connections

        from tests.djangoapp.models import Order

        call_command("migrate", database="default", run_syncdb=True, verbosity=0)
        for alias, dsn in (("default", default), ("other", other)):
            if alias == "other":
                with connections[alias].schema_editor() as editor:
                    editor.create_model(Order)
            with Audit.connect(dsn) as audit:
                audit.install()
                audit.enable("public.shop_order")
        yield {"default": default, "other": other}
        connections.close_all()


@pytest.fixture
def since(project: dict[str, str]) -> dict[str, int]:
    """The last change id of each database before the test."""
    marks = {}
    for alias, dsn in project.items():
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT coalesce(max(id), 0) FROM audit.change").fetchone()
            assert row is not None
            marks[alias] = int(row[0])
    return marks


def changes(
    project: dict[str, str], since: dict[str, int], alias: str = "default"
) -> list[dict[str, Any]]:
    """The changes made since the test started, oldest first, with their transaction."""
    with psycopg.connect(project[alias]) as conn:
        conn.row_factory = psycopg.rows.dict_row
        return conn.execute(
            "SELECT id, op, new, old, txid::text AS txid, actor, context, backend_pid,"
            " application_name FROM audit.history WHERE id > %s ORDER BY id",
            (since[alias],),
        ).fetchall()


def user(name: str, **fields: Any) -> Any:
    from django.contrib.auth.models import User

    return User.objects.create_user(username=name, password="pw", **fields)


def client(who: Any = None, **kwargs: Any) -> Any:
    from django.test import Client

    c = Client(**kwargs)
    if who is not None:
        c.force_login(who)
    return c


def request_part(ctx: dict[str, Any]) -> dict[str, Any]:
    """The context without its per-request id (checked separately)."""
    assert isinstance(ctx["request_id"], str) and ctx["request_id"]
    return {k: v for k, v in ctx.items() if k != "request_id"}


def test_interleaved_users_on_one_reused_connection(
    project: dict[str, str], since: dict[str, int]
) -> None:
    alice, bob = user("alice"), user("o'brien%")  # quote and percent sign in the actor
    as_alice, as_bob = client(alice), client(bob)
    ids = []
    for who, amount in ((as_alice, 1), (as_bob, 2), (as_alice, 3), (as_bob, 4)):
        response = who.post(
            "/create",
            {"customer": f"c{amount}", "amount": amount},
            HTTP_USER_AGENT=f"agent-{amount}",
            HTTP_X_FORWARDED_FOR=f"198.51.100.9, 203.0.113.{amount}",
            HTTP_X_REQUEST_ID=f"req-{amount}",
            HTTP_X_TENANT="acme" if amount == 3 else "",
        )
        assert response.status_code == 200
        ids.append(response.json()["id"])
    found = changes(project, since)
    assert [(c["op"], c["new"]["amount"], c["actor"]) for c in found] == [
        ("INSERT", 1, "alice"), ("INSERT", 2, "o'brien%"), ("INSERT", 3, "alice"), ("INSERT", 4, "o'brien%"),
    ]  # fmt: skip
    for change, amount in zip(found, (1, 2, 3, 4), strict=True):
        expected = {
            "request_id": f"req-{amount}", "method": "POST", "path": "/create",
            "ip": f"203.0.113.{amount}",  # the trusted proxy's entry, not the client's claim
            "user_agent": f"agent-{amount}",
        }  # fmt: skip
        if amount == 3:
            expected["tenant"] = "acme"  # PGAUDIT_CONTEXT_HOOK
        assert change["context"] == expected
        assert change["application_name"] == "django-test"
    # One server session served all four requests: the attribution did not ride on the session.
    assert len({c["backend_pid"] for c in found}) == 1
    assert len({c["txid"] for c in found}) == 4
    # And nothing is left on the session for the next statement of the connection.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('pgaudit.actor', true), current_setting('pgaudit.context', true)"
        )
        assert cursor.fetchone() in ((None, None), ("", ""))
        cursor.execute("INSERT INTO shop_order (customer, amount) VALUES ('outside', 9)")
    last = changes(project, since)[-1]
    assert (last["new"]["customer"], last["actor"], last["context"]) == ("outside", None, None)


def test_anonymous_request_has_no_actor_but_its_context(
    project: dict[str, str], since: dict[str, int]
) -> None:
    alice = user("alice2")
    client(alice).post("/create", {"customer": "a", "amount": 1})
    response = client().post("/create", {"customer": "anon", "amount": 5}, REMOTE_ADDR="192.0.2.5")
    assert response.status_code == 200
    found = changes(project, since)
    assert [(c["new"]["customer"], c["actor"]) for c in found] == [("a", "alice2"), ("anon", None)]
    # No proxy header: REMOTE_ADDR.
    assert request_part(found[1]["context"]) == {
        "method": "POST",
        "path": "/create",
        "ip": "192.0.2.5",
    }
    assert found[0]["context"]["request_id"] != found[1]["context"]["request_id"]


def test_async_views_under_asgi(project: dict[str, str], since: dict[str, int]) -> None:
    """An async view served by Django's ASGI handler (AsyncClient): the middleware is adapted
    into a worker thread, the ORM's async API writes from one, and two concurrent requests by
    different users each get their own actor and context."""
    import asyncio

    from asgiref.sync import sync_to_async
    from django.db import connections
    from django.test import AsyncClient

    carol, dave = user("carol-async"), user("dave-async")
    clients = [AsyncClient(), AsyncClient()]
    for c, who in zip(clients, (carol, dave), strict=True):
        c.force_login(who)

    async def both() -> list[Any]:
        # The ORM's async API and the adapted middleware share one worker thread, whose Django
        # connections outlive the call: close them before (a database of another server's run)
        # and after.
        await sync_to_async(connections.close_all)()
        try:
            return list(
                await asyncio.gather(
                    *(
                        c.post(
                            "/acreate",
                            {"customer": f"async-{n}", "amount": n},
                            headers={"X-Request-ID": f"areq-{n}"},
                        )
                        for n, c in enumerate(clients)
                    )
                )
            )
        finally:
            await sync_to_async(connections.close_all)()

    responses = asyncio.run(both())
    assert [r.status_code for r in responses] == [200, 200]
    found = {c["new"]["customer"]: c for c in changes(project, since)}
    assert {k: v["actor"] for k, v in found.items()} == {
        "async-0": "carol-async",
        "async-1": "dave-async",
    }
    for n in (0, 1):
        assert found[f"async-{n}"]["context"]["request_id"] == f"areq-{n}"
        assert found[f"async-{n}"]["context"]["path"] == "/acreate"


@pytest.mark.parametrize("atomic_requests", [False, True], ids=["autocommit", "atomic_requests"])
def test_failing_requests(
    project: dict[str, str], since: dict[str, int], atomic_requests: bool
) -> None:
    _atomic_requests(atomic_requests)
    try:
        carol = user(f"carol_{atomic_requests}")
        c = client(carol, raise_request_exception=False)
        assert c.post("/atomic-fail").status_code == 500
        assert c.post("/write-fail").status_code == 500
        ok = client().post("/create", {"customer": "next", "amount": 1})
        assert ok.status_code == 200
    finally:
        _atomic_requests(False)
    found = changes(project, since)
    # The atomic block's write was rolled back: no change recorded. The write before the error
    # was committed in autocommit mode (attributed to carol) and rolled back with the request
    # under ATOMIC_REQUESTS. The next request, anonymous, carries nothing of carol's.
    expected = [("next", None)]
    if not atomic_requests:
        expected.insert(0, ("half-done", f"carol_{atomic_requests}"))
    assert [(c["new"]["customer"], c["actor"]) for c in found] == expected
    assert found[-1]["context"]["path"] == "/create"


@pytest.mark.parametrize("atomic_requests", [False, True], ids=["autocommit", "atomic_requests"])
def test_raw_sql_and_atomic_blocks(
    project: dict[str, str], since: dict[str, int], atomic_requests: bool
) -> None:
    dave = user(f"dave_{atomic_requests}")
    c = client(dave)
    pk = c.post("/create", {"customer": "d", "amount": 1}).json()["id"]
    _atomic_requests(atomic_requests)
    try:
        assert c.post(f"/raw/{pk}", HTTP_X_REQUEST_ID="raw-1").status_code == 200
        assert c.post(f"/ticket/{pk}", HTTP_X_REQUEST_ID="ticket-1").status_code == 200
    finally:
        _atomic_requests(False)
    found = changes(project, since)
    actor = f"dave_{atomic_requests}"
    assert [(c["op"], c["new"]["amount"], c["new"]["customer"], c["actor"]) for c in found] == [
        ("INSERT", 1, "d", actor),
        ("UPDATE", 2, "d", actor),  # raw SQL with parameters
        ("UPDATE", 2, "d%", actor),  # raw SQL without parameters, a % in its text
        ("UPDATE", 70, "d%", actor),
        ("UPDATE", 70, "ticketed", actor),
    ]
    raw, ticket = found[1:3], found[3:]
    for change in raw:
        assert change["context"]["request_id"] == "raw-1"
        assert "ticket" not in change["context"]
    for change in ticket:
        assert change["context"]["request_id"] == "ticket-1"
        assert change["context"]["ticket"] == "OPS-7"  # context() inside the view
    assert ticket[0]["txid"] == ticket[1]["txid"]  # one atomic block: one transaction
    # Autocommit: each raw statement its own transaction; ATOMIC_REQUESTS: one for the request.
    assert (raw[0]["txid"] == raw[1]["txid"]) is atomic_requests


def test_several_databases_and_bulk_writes(project: dict[str, str], since: dict[str, int]) -> None:
    erin = user("erin")
    c = client(erin)
    assert c.post("/both", HTTP_X_REQUEST_ID="both-1").status_code == 200
    assert c.post("/bulk", HTTP_X_REQUEST_ID="bulk-1").status_code == 200
    here, there = changes(project, since), changes(project, since, "other")
    assert [(c["op"], c["new"]["customer"], c["actor"]) for c in there] == [
        ("INSERT", "there", "erin"), ("UPDATE", "there", "erin"),
    ]  # fmt: skip
    assert {c["context"]["request_id"] for c in there} == {"both-1"}
    assert [(c["new"]["customer"], c["actor"], c["context"]["request_id"]) for c in here] == [
        ("here", "erin", "both-1"),
        *[(f"bulk{i}", "erin", "bulk-1") for i in range(3)],  # bulk_create: one statement
        ("many1", "erin", "bulk-1"), ("many2", "erin", "bulk-1"),  # executemany
    ]  # fmt: skip


def test_actor_settings(project: dict[str, str], since: dict[str, int]) -> None:
    from django.test import override_settings

    frank = user("frank", email="frank@example.com")
    for how in ("id", "email", "tests.test_contrib_django.staff_actor"):
        with override_settings(PGAUDIT_ACTOR=how):
            client(frank).post("/create", {"customer": how, "amount": 1})
    assert [(c["new"]["customer"], c["actor"]) for c in changes(project, since)] == [
        ("id", str(frank.pk)), ("email", "frank@example.com"),
        ("tests.test_contrib_django.staff_actor", "staff:frank"),
    ]  # fmt: skip


def staff_actor(request: Any) -> str | None:
    return f"staff:{request.user.get_username()}" if request.user.is_authenticated else None


def test_server_side_binding_and_selects(project: dict[str, str], since: dict[str, int]) -> None:
    """Server-side binding: the settings in a statement of their own, in the same transaction
    (autocommit: a short atomic block around both). A SELECT of a function that writes is left
    alone unless PGAUDIT_ATTRIBUTE_SELECTS."""
    from django.db import connections, transaction
    from django.test import override_settings

    from pgaudit_tool.contrib.django import context
    from tests.djangoapp.models import Order

    with connections["default"].cursor() as cursor:
        cursor.execute(
            "CREATE OR REPLACE FUNCTION shop_touch(p_id int) RETURNS int LANGUAGE sql AS"
            " 'UPDATE shop_order SET amount = amount + 1 WHERE id = p_id RETURNING amount'"
        )
    bound = connections["bound"]
    with context(actor="binder", via="server-side binding"):
        order = Order.objects.using("bound").create(customer="bound", amount=1)
        assert bound.get_autocommit() and not bound.in_atomic_block  # the short block is over
        with transaction.atomic(using="bound"):
            assert Order.objects.using("bound").filter(pk=order.pk).update(amount=2) == 1
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT shop_touch(%s)", [order.pk])
            with override_settings(PGAUDIT_ATTRIBUTE_SELECTS=True):
                cursor.execute("SELECT shop_touch(%s)", [order.pk])
                assert cursor.fetchone() == (4,)  # the function's result, not set_config's
    with bound.cursor() as cursor:
        assert type(cursor.cursor).__name__ == "ServerBindingCursor"
    assert [(c["new"]["amount"], c["actor"], c["context"]) for c in changes(project, since)] == [
        (1, "binder", {"via": "server-side binding"}),
        (2, "binder", {"via": "server-side binding"}),
        (3, None, None),
        (4, "binder", {"via": "server-side binding"}),
    ]


def test_context_outside_requests(project: dict[str, str], since: dict[str, int]) -> None:
    """Management commands, Celery tasks, scripts: ``context(actor=...)``, nested, and
    nothing once the block is left."""
    from django.db import transaction

    from pgaudit_tool.contrib.django import context
    from tests.djangoapp.models import Order

    with context(actor="nightly-import", job="import", path="C:\\in\\n.csv"):  # backslashes
        Order.objects.create(customer="batch", amount=1)  # autocommit
        with context(step="2"), transaction.atomic():
            assert Order.objects.filter(customer="batch").update(amount=2) == 1  # its rowcount
        with context(actor=None):
            Order.objects.filter(customer="batch").update(amount=3)
    Order.objects.filter(customer="batch").update(amount=4)
    found = changes(project, since)
    assert [(c["new"]["amount"], c["actor"], c["context"]) for c in found] == [
        (1, "nightly-import", {"job": "import", "path": "C:\\in\\n.csv"}),
        (2, "nightly-import", {"job": "import", "path": "C:\\in\\n.csv", "step": "2"}),
        (3, None, {"job": "import", "path": "C:\\in\\n.csv"}),
        (4, None, None),
    ]


def test_manage_py_pgaudit(
    project: dict[str, str], since: dict[str, int], capfd: pytest.CaptureFixture[str]
) -> None:
    from django.core.management import CommandError, call_command

    call_command("pgaudit", "--quiet", "status", "--format", "json")
    status = json.loads(capfd.readouterr().out)
    assert [(s["table"], s["state"]) for s in status] == [("public.shop_order", "ok")]
    call_command("pgaudit", "history", "public.shop_order", "--format", "jsonl", database="other")
    lines = capfd.readouterr().out.splitlines()
    with psycopg.connect(project["other"]) as conn:
        row = conn.execute("SELECT count(*) FROM audit.change").fetchone()
    assert row is not None and len(lines) == row[0]
    with pytest.raises(CommandError) as failed:
        call_command("pgaudit", "enable", "public.no_such_table")
    assert failed.value.returncode == 2
    assert "no_such_table" in capfd.readouterr().err
    with pytest.raises(CommandError, match="no database alias"):
        call_command("pgaudit", "status", database="nope")


def test_admin_history_page(project: dict[str, str], since: dict[str, int]) -> None:
    import html

    from django.contrib.auth.models import Permission

    from pgaudit_tool.contrib.django import context
    from tests.djangoapp.models import Order

    root = user("root", is_staff=True, is_superuser=True)
    alice = user("alice_admin")
    pk = client(alice).post("/create", {"customer": "Acme", "amount": 1}).json()["id"]
    with context(actor="cron", job="nightly"):
        Order.objects.filter(pk=pk).update(amount=2)
    ids = [c["id"] for c in changes(project, since) if c["new"] and c["new"]["id"] == pk]
    assert len(ids) == 2
    admin = client(root)
    form = admin.get(f"/admin/djangoapp/order/{pk}/change/")
    history_url = f"/admin/djangoapp/order/{pk}/pgaudit-history/"
    assert form.status_code == 200 and history_url in form.content.decode()
    page = admin.get(history_url)
    assert page.status_code == 200
    text = html.unescape(page.content.decode())
    rows = text.split('<tr class="pgaudit-change">')[1:]
    assert len(rows) == 2  # newest first: cron's update, then alice's insert
    assert (
        'class="pgaudit-actor">cron<' in rows[0]
        and "<th>amount</th><td>1</td><td>→</td><td>2</td>" in rows[0]
    )
    assert "<th>customer</th>" not in rows[0]  # an UPDATE shows what changed
    assert f"pgaudit-tool revert --change {ids[1]} --dry-run" in rows[0]
    assert 'class="pgaudit-actor">alice_admin<' in rows[1] and "POST /create" in rows[1]
    assert "<th>customer</th><td></td><td>→</td><td>Acme</td>" in rows[1]
    assert f"pgaudit-tool revert --change {ids[0]} --dry-run" in rows[1]
    # Viewing the history is not a change: nothing new was recorded.
    assert [c["id"] for c in changes(project, since) if c["new"] and c["new"]["id"] == pk] == ids

    # Deleted, its history stays readable; others need the model's view permission.
    Order.objects.filter(pk=pk).delete()
    assert "DELETE" in admin.get(history_url).content.decode()
    clerk = user("clerk", is_staff=True)
    assert client(clerk).get(history_url).status_code == 403
    clerk.user_permissions.add(Permission.objects.get(codename="view_order"))
    assert client(clerk).get(history_url).status_code == 200
    assert client().get(history_url).status_code == 302  # to the login page


def test_refuses_to_run_without_the_app(project: dict[str, str]) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from pgaudit_tool.contrib.django import AuditMiddleware, context

    without = [app for app in _APPS if app != "pgaudit_tool.contrib.django"]
    with override_settings(INSTALLED_APPS=without):
        with pytest.raises(ImproperlyConfigured, match="INSTALLED_APPS"):
            AuditMiddleware(lambda request: None)
        with pytest.raises(ImproperlyConfigured, match="INSTALLED_APPS"), context(actor="x"):
            pass


# --------------------------------------------------------------------------- PgBouncer

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


@pytest.fixture
def bouncer(project: dict[str, str]) -> Iterator[str]:
    """PgBouncer in transaction mode with ONE server connection, in front of "default"'s
    database: every client shares it. Yields its DSN."""
    if not os.path.exists(PGBOUNCER):
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    server = conninfo_to_dict(project["default"])
    # Not under pytest's tmp_path: its parents are private to root, pgbouncer runs as postgres.
    with tempfile.TemporaryDirectory(prefix="pgaudit-pgbouncer-") as name:
        yield from _run_pgbouncer(Path(name), server)


def _run_pgbouncer(folder: Path, server: dict[str, Any]) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (folder / "users.txt").write_text(f'"{server["user"]}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        textwrap.dedent(f"""
        [databases]
        * = host={server["host"]} port={server["port"]}
        [pgbouncer]
        listen_addr = 127.0.0.1
        listen_port = {port}
        unix_socket_dir =
        auth_type = trust
        auth_file = {folder / "users.txt"}
        pool_mode = transaction
        default_pool_size = 1
        max_client_conn = 10
        ignore_startup_parameters = extra_float_digits
        """)
    )
    as_postgres: dict[str, Any] = {}
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        for path in (folder, folder / "users.txt", folder / "pgbouncer.ini"):
            shutil.chown(path, "postgres")
        as_postgres = {"user": "postgres", "group": "postgres"}
    process = subprocess.Popen(
        [PGBOUNCER, str(folder / "pgbouncer.ini")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **as_postgres,
    )
    dsn = f"host=127.0.0.1 port={port} user={server['user']} dbname={server['dbname']}"
    try:
        for _ in range(100):
            try:
                psycopg.connect(dsn, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if process.poll() is not None:
                    raise AssertionError(process.communicate()[0].decode()) from None
                time.sleep(0.1)
        yield dsn
    finally:
        process.terminate()
        process.wait(10)


def test_behind_pgbouncer_in_transaction_mode(
    project: dict[str, str], since: dict[str, int], bouncer: str
) -> None:
    """One server connection shared by a Django request (two autocommit writes, paused between
    them) and another client writing in the pause: each write carries exactly its own
    attribution, and a session-level setting, for contrast, does leak to the other client."""
    from tests.djangoapp import views
    from tests.djangoapp.models import Order

    order = Order.objects.create(customer="pooled", amount=0)
    grace = user("grace")
    _point("default", bouncer)
    reached, go = views.PAUSE
    reached.clear()
    go.clear()
    outcome: dict[str, Any] = {}

    def serve() -> None:
        from django.db import connections

        try:
            outcome["status"] = client(grace).post(f"/pause/{order.pk}").status_code
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc
        finally:
            connections.close_all()

    worker = threading.Thread(target=serve)
    try:
        worker.start()
        assert reached.wait(30), outcome
        with psycopg.connect(bouncer, autocommit=True) as other:
            other.execute("UPDATE shop_order SET amount = 50 WHERE id = %s", (order.pk,))
        go.set()
        worker.join(30)
        assert outcome == {"status": 200}
        # The contrast: a session-level value set by one client reaches the next one.
        with psycopg.connect(bouncer, autocommit=True) as careless:
            careless.execute("SELECT set_config('pgaudit.actor', 'leaked', false)")
        with psycopg.connect(bouncer, autocommit=True) as other:
            other.execute("UPDATE shop_order SET amount = 60 WHERE id = %s", (order.pk,))
            other.execute("RESET ALL")
    finally:
        go.set()
        worker.join(30)
        _point("default", project["default"])
    found = [c for c in changes(project, since) if c["new"]["customer"] == "pooled"][1:]
    assert [(c["new"]["amount"], c["actor"]) for c in found] == [
        (1, "grace"), (50, None), (2, "grace"), (60, "leaked"),
    ]  # fmt: skip
    assert found[0]["context"]["path"] == f"/pause/{order.pk}"
    assert found[1]["context"] is None
    assert len({c["backend_pid"] for c in found}) == 1  # one server connection for all
