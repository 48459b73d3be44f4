"""Reports (issue 17): ``pgaudit-tool report`` and ``Audit.report``.

A realistic scenario (several actors and a login role without actor, three tables, a mass
delete that the watcher raises an alert for, hostile values) is reported on; the json figures
are compared with counts the test computes itself with SQL on ``audit.change``; the Markdown
has its sections; the html is opened in a real headless Chromium (Debian's ``chromium``),
driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``): no console error, no
network request, both charts drawn, a timeline entry expands to its row diff, and a screenshot
is written (``PGAUDIT_REPORT_SCREENSHOT=path`` keeps it, e.g. for ``docs/report.png``).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from pgaudit_tool import Audit
from pgaudit_tool.cli import main
from pgaudit_tool.errors import InvalidInput
from pgaudit_tool.report import render
from tests.conftest import PgServer

REPO = Path(__file__).resolve().parents[1]
HOSTILE_ACTOR = "<script>alert('actor')</script>"
HOSTILE_NOTE = '<script>alert("x")</script><img src=x onerror=alert(1)> | `tick` **bold**'
UNICODE = "Zoë Ångström 日本語 🎉 \u202eevil"
LONG = "long-" + "x" * 12_000
MASS_DELETE = 150
EXIT_BAD_INPUT = 2


def invoke(dsn: str, *args: str) -> Result:
    result = CliRunner().invoke(main, ["--dsn", dsn, *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def scene(audit: Audit) -> Audit:
    """Three audited tables; alice, bob, carol, mallory and the hostile actor, and changes
    without an actor by the login role; mallory's mass delete; the watcher's alerts."""
    c = audit.conn
    c.execute(
        "CREATE SCHEMA app;"
        " CREATE TABLE app.customers (id int PRIMARY KEY, name text, email text, note text);"
        " CREATE TABLE app.orders (id int PRIMARY KEY, customer_id int, amount numeric(12,2),"
        "   status text);"
        " CREATE TABLE app.payment (id int PRIMARY KEY, amount numeric(12,2), note text);"
    )
    audit.enable("app.customers", "app.orders", "app.payment")
    audit.watch(once=True)  # the watcher's cursor starts here: it evaluates what follows
    with audit.actor("alice", {"ticket": "OPS-7"}):
        c.execute(
            "INSERT INTO app.customers SELECT g, 'customer ' || g, 'c' || g || '@example.org',"
            " NULL FROM generate_series(1, 20) g"
        )
    with audit.actor("alice"):
        c.execute("UPDATE app.customers SET email = 'new' || id || '@example.org' WHERE id <= 5")
    with audit.actor("bob"):
        c.execute(
            "INSERT INTO app.orders SELECT g, 1 + g % 20, g * 2.5, 'new'"
            " FROM generate_series(1, 30) g"
        )
    with audit.actor("bob"):
        c.execute("UPDATE app.orders SET status = 'paid' WHERE id <= 10")
    for i in range(3):
        with audit.actor("carol"):
            c.execute("UPDATE app.customers SET name = %s WHERE id = %s", (f"renamed {i}", 6 + i))
    for start in range(1, 200, 50):  # no actor: the login role, 4 transactions of 50 rows
        c.execute(
            "INSERT INTO app.payment SELECT g, g * 1.25, 'p' FROM generate_series(%s::int, %s::int) g",
            (start, start + 49),
        )
    with audit.actor(HOSTILE_ACTOR):
        c.execute(
            "UPDATE app.customers SET note = %s, name = %s, email = NULL WHERE id = 10",
            (HOSTILE_NOTE, UNICODE),
        )
        c.execute("UPDATE app.customers SET note = %s WHERE id = 11", (LONG,))
    with audit.actor("mallory"):
        c.execute(f"DELETE FROM app.payment WHERE id <= {MASS_DELETE}")
    spread(audit)
    audit.watch(once=True)
    return audit


def spread(audit: Audit) -> None:
    """Move the scenario's transactions apart in time, 3 hours between two (the last one 10
    minutes ago), so that the charts have several hours to show."""
    audit.conn.execute(
        "WITH n AS (SELECT txid, count(*) OVER () - row_number() OVER (ORDER BY txid) AS back"
        "             FROM audit.transaction),"
        "     moved AS (UPDATE audit.transaction AS t"
        "                  SET started_at = now() - n.back * interval '3 hours' - interval '10 min',"
        "                      committed_at = now() - n.back * interval '3 hours' - interval '10 min'"
        "                 FROM n WHERE n.txid = t.txid RETURNING t.txid, t.committed_at)"
        " UPDATE audit.change AS c SET clock_at = m.committed_at, statement_at = m.committed_at,"
        "                              started_at = m.committed_at"
        "   FROM moved AS m WHERE m.txid = c.txid"
    )


def sql_figures(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The figures a report of everything must show, computed here from the raw log."""
    q = conn.execute
    per_op = dict(q("SELECT op::text, count(*) FROM audit.change GROUP BY op").fetchall())
    return {
        "changes": scalar(conn, "SELECT count(*) FROM audit.change"),
        "transactions": scalar(conn, "SELECT count(DISTINCT txid) FROM audit.change"),
        "ops": per_op,
        "subjects": dict(
            q(
                "SELECT coalesce(t.actor, t.db_user), count(*) FROM audit.change c"
                " JOIN audit.transaction t USING (txid) GROUP BY 1"
            ).fetchall()
        ),
        "tables": {
            f"{s}.{t}": n
            for s, t, n in q(
                "SELECT schema_name, table_name, count(*) FROM audit.change GROUP BY 1, 2"
            ).fetchall()
        },
        "largest": q(
            "SELECT txid::text::bigint, count(*) FROM audit.change GROUP BY txid"
            " ORDER BY count(*) DESC, txid DESC LIMIT 1"
        ).fetchone(),
        "alerts": scalar(conn, "SELECT count(*) FROM audit.alert"),
        "latest_txid": scalar(
            conn,
            "SELECT txid::text::bigint FROM audit.transaction ORDER BY committed_at DESC LIMIT 1",
        ),
    }


# --------------------------------------------------------------------------- figures


def test_json_figures_equal_sql_counts(scene: Audit, dsn: str) -> None:
    want = sql_figures(scene.conn)
    result = invoke(dsn, "report", "--format", "json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)

    s = got["summary"]
    assert s["changes"] == want["changes"] == 20 + 5 + 30 + 10 + 3 + 200 + 2 + MASS_DELETE
    assert s["transactions"] == want["transactions"]
    assert (s["inserts"], s["updates"], s["deletes"], s["truncates"]) == (
        want["ops"].get("I", 0),
        want["ops"].get("U", 0),
        want["ops"].get("D", 0),
        want["ops"].get("T", 0),
    )
    assert s["tables"] == 3
    assert s["actors"] == 5  # alice, bob, carol, mallory, the hostile one
    assert s["db_users"] == 1
    assert s["alerts"] == want["alerts"] >= 1  # at least the destructive delete

    assert {p["name"]: p["changes"] for p in got["subjects"]} == want["subjects"]
    kinds = {p["name"]: p["kind"] for p in got["subjects"]}
    login = scalar(scene.conn, "SELECT session_user")
    assert kinds[login] == "db_user" and kinds["alice"] == "actor"
    assert {t["table"]: t["changes"] for t in got["tables"]} == want["tables"]
    payment = next(t for t in got["tables"] if t["table"] == "app.payment")
    assert (payment["inserts"], payment["deletes"], payment["rows"]) == (200, MASS_DELETE, 200)

    alice = next(p for p in got["subjects"] if p["name"] == "alice")
    assert alice["transactions"] == 2 and alice["largest_changes"] == 20
    assert alice["columns"][0] == {"table": "app.customers", "column": "email", "changes": 5}
    assert alice["tables"] == [
        {"table": "app.customers", "inserts": 20, "updates": 5, "deletes": 0, "truncates": 0,
         "changes": 25}
    ]  # fmt: skip
    carol = next(p for p in got["subjects"] if p["name"] == "carol")
    assert carol["transactions"] == 3 and carol["columns"][0]["column"] == "name"

    # The charts' figures add up to the same counts, per table and per subject.
    for key, names in (("by_table", want["tables"]), ("by_subject", want["subjects"])):
        sums: dict[str, int] = {}
        for r in got["activity"][key]:
            sums[r["name"]] = sums.get(r["name"], 0) + r["changes"]
        assert sums == names
    assert got["activity"]["bucket"] == "hour"

    # Incidents: the largest transaction is mallory's delete, marked as a mass change, with
    # the exact command that would undo it, which works.
    txid, changes = want["largest"]
    [first, *_] = got["incidents"]["largest_transactions"]
    assert (first["txid"], first["changes"], first["actor"], first["mass"]) == (
        txid, changes, "mallory", True
    )  # fmt: skip
    assert first["revert"] == f"pgaudit-tool revert --txid {txid} --dry-run"
    assert got["activity"]["mass_changes"] == [
        {"txid": txid, "at": first["committed_at"], "changes": MASS_DELETE}
    ]
    dry = invoke(dsn, *first["revert"].split()[1:])
    assert dry.exit_code == 0, dry.output
    assert f"{MASS_DELETE}" in dry.stdout
    assert any(a["detector"] == "destructive" for a in got["incidents"]["alerts"])

    # Timeline: newest first, every transaction shown (fewer than the cap), row changes capped.
    tl = got["timeline"]
    assert tl["total"] == tl["shown"] == want["transactions"] and tl["more"] == 0
    assert tl["transactions"][0]["txid"] == want["latest_txid"] == txid
    assert len(tl["transactions"][0]["rows"]) == tl["per_transaction"] == 20
    assert tl["transactions"][0]["rows_more"] == MASS_DELETE - 20
    times = [datetime.fromisoformat(t["committed_at"]) for t in tl["transactions"]]
    assert times == sorted(times, reverse=True)


def test_filters_narrow_every_figure(scene: Audit) -> None:
    c = scene.conn
    alice = scene.report(actors=["alice"])
    assert alice["summary"]["changes"] == scalar(
        c, "SELECT count(*) FROM audit.history WHERE actor = 'alice'"
    )
    assert [p["name"] for p in alice["subjects"]] == ["alice"]
    assert alice["title"] == "Activity report: alice"

    orders = scene.report(tables="app.orders")  # one name, or a list of them
    assert orders["summary"]["changes"] == 40
    assert [t["table"] for t in orders["tables"]] == ["app.orders"]
    login = scalar(c, "SELECT session_user")
    by_login = scene.report(db_users=[login])
    assert by_login["summary"]["changes"] == scalar(c, "SELECT count(*) FROM audit.change")

    # A window: since the mass delete's commit, only it.
    at = scalar(c, "SELECT max(clock_at) FROM audit.change")
    last = scene.report(since=at)
    assert last["summary"]["changes"] == scalar(
        c, "SELECT count(*) FROM audit.change WHERE clock_at >= %s", (at,)
    )
    with pytest.raises(InvalidInput, match="window is empty"):
        scene.report(since="now", until="1 hour ago")
    # A small timeline cap: a note with how many more and the command that lists them.
    from pgaudit_tool.report import Limits

    capped = scene.report(limits=Limits(timeline=3))
    assert capped["timeline"]["shown"] == 3
    assert capped["timeline"]["more"] == capped["summary"]["transactions"] - 3
    assert capped["timeline"]["more_command"].startswith("pgaudit-tool history --until ")
    md = render(capped, "md")
    assert f"{capped['timeline']['more']} more transaction(s)" in md


def test_reader_role_can_report(scene: Audit, pg_server: PgServer, make_role: Any) -> None:
    reviewer = make_role("reviewer")
    scene.conn.execute(f'GRANT pgaudit_reader TO "{reviewer}"')
    dbname = scene.conn.info.dbname
    with Audit.connect(pg_server.dsn_for(dbname, user=reviewer)) as mine:
        got = mine.report()
        # The SQL API: each section as its own function, the same figures.
        c = mine.conn
        assert scalar(c, "SELECT changes FROM audit.report_summary()") == got["summary"]["changes"]
        assert scalar(
            c, "SELECT sum(changes) FROM audit.report_activity(p_by => 'subject', p_bucket => 'day')"
        ) == got["summary"]["changes"]  # fmt: skip
        assert c.execute(
            "SELECT name, changes FROM audit.report_subjects() ORDER BY changes DESC, name"
        ).fetchall() == sorted(
            ((p["name"], p["changes"]) for p in got["subjects"]), key=lambda x: (-x[1], x[0])
        )
        assert c.execute(
            "SELECT table_name, changes, rows FROM audit.report_tables() ORDER BY 1"
        ).fetchall() == sorted((t["table"], t["changes"], t["rows"]) for t in got["tables"])
        largest = got["incidents"]["largest_transactions"][0]
        assert c.execute(
            "SELECT txid::text::bigint, changes FROM audit.report_transactions(p_largest => 1,"
            " p_latest => 0)"
        ).fetchall() == [(largest["txid"], largest["changes"])]
        assert scalar(c, "SELECT count(*) FROM audit.report_subject_tables()") == sum(
            len(p["tables"]) for p in got["subjects"]
        )
    assert got["summary"]["changes"] == scalar(scene.conn, "SELECT count(*) FROM audit.change")


# --------------------------------------------------------------------------- md, empty, hostile


SECTIONS = ("## 1. Summary", "## 2. Activity over time", "## 3. Who", "## 4. What",
            "## 5. Incidents", "## 6. Timeline")  # fmt: skip


def test_markdown_has_the_sections_and_escapes(scene: Audit, dsn: str) -> None:
    title = "Weekly <b>report</b> 🎉 Wöchentlich"
    result = invoke(dsn, "report", "--format", "md", "--title", title)
    assert result.exit_code == 0, result.output
    md = result.stdout
    assert md.startswith("# Weekly &lt;b&gt;report&lt;/b&gt; 🎉 Wöchentlich\n")
    positions = [md.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    txid = sql_figures(scene.conn)["largest"][0]
    assert f"`pgaudit-tool revert --txid {txid} --dry-run`" in md
    assert "| mallory |" in md
    # Hostile values: no raw HTML, no table broken by a |, no line break inside a cell.
    assert "<script>" not in md and "&lt;script&gt;" in md
    for line in md.splitlines():
        if line.startswith("|"):
            assert line.endswith("|"), line
    assert "| &lt;script&gt;alert('actor')&lt;/script&gt; | actor |" in md
    # Row diffs of the timeline's transactions: before and after, changed columns in bold.
    assert "### txid " in md and "| column | before | after |" in md
    assert re.search(r"^\| \*\*\w+\*\* \| .* \| .* \|$", md, re.MULTILINE), md
    Path(os.environ.get("PGAUDIT_REPORT_MD", os.devnull)).write_text(md)


def test_empty_window_is_a_clear_report(audit: Audit, dsn: str, tmp_path: Path) -> None:
    for fmt in ("md", "json"):
        result = invoke(dsn, "report", "--since", "1 hour ago", "--format", fmt)
        assert result.exit_code == 0, result.output
        if fmt == "md":
            assert "**Nothing happened:** no change was captured in this window." in result.stdout
            assert all(s in result.stdout for s in SECTIONS)
        else:
            got = json.loads(result.stdout)
            assert got["summary"]["changes"] == got["summary"]["transactions"] == 0
            assert got["subjects"] == got["tables"] == got["timeline"]["transactions"] == []
    out = tmp_path / "empty.html"
    result = invoke(dsn, "report", "--output", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "Nothing happened: no change was captured in this window" in page
    assert 'id="chart-tables"' not in page


def test_html_escapes_hostile_values(scene: Audit) -> None:
    page = render(scene.report(), "html")
    # Every <script> element is one of the report's own three.
    assert page.count("<script") == 3
    assert "&lt;script&gt;alert(&#39;actor&#39;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "onerror=alert(1)>" not in page
    assert "Zoë Ångström 日本語 🎉" in page
    assert LONG not in page and "more characters)" in page
    assert '<span class="null">NULL</span>' in page
    # The chart data is JSON that cannot end its script element.
    data = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert data is not None and "<" not in data.group(1)
    assert json.loads(data.group(1))["bucket"] == "hour"


def test_html_is_self_contained(scene: Audit) -> None:
    page = render(scene.report(), "html")
    assert "http://" not in page and "https://" not in page
    markup = re.sub(r"(<script[^>]*>).*?</script>", r"\1", page, flags=re.S)
    tags = re.findall(r"<[a-zA-Z][^>]*>", markup)
    linking = r"""\b(?:src|href|action|poster|data|srcset)\s*=\s*["']?(?!["'#])"""
    assert [t for t in tags if re.search(linking, t)] == []
    assert any('href="#summary"' in t for t in tags)
    assert not re.search(r"url\(|@import|<link\b|<iframe\b", page)
    assert len(page.encode()) < 400_000


def test_html_refused_on_a_terminal(scene: Audit, dsn: str, tmp_path: Path) -> None:
    pexpect = pytest.importorskip("pexpect")
    tool = str(Path(sys.executable).with_name("pgaudit-tool"))
    out, status = pexpect.run(f"{tool} --dsn '{dsn}' report", withexitstatus=True, timeout=60)
    text = out.decode()
    assert status == EXIT_BAD_INPUT, text
    assert "error: an html report is a file for a browser, not for a terminal" in text
    assert "hint: Write it to a file (--output report.html), or choose --format md." in text
    target = tmp_path / "r.html"
    out, status = pexpect.run(
        f"{tool} --dsn '{dsn}' report --output {target}", withexitstatus=True, timeout=60
    )
    assert status == 0, out.decode()
    assert target.read_text().startswith("<!DOCTYPE html>")
    assert f"written to {target}" in out.decode()


def test_templates_ship_in_the_wheel(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = tmp_path.glob("pgaudit_tool-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("report.html.j2", "report.md.j2", "vendor/uPlot.iife.min.js",
                 "vendor/uPlot.min.css", "vendor/LICENSE.uPlot"):  # fmt: skip
        assert f"pgaudit_tool/templates/{name}" in names
    assert "pgaudit_tool/_data/sql/functions/11_report.sql" in names


# --------------------------------------------------------------------------- a real browser


def chromium_path() -> str:
    """Debian's chromium: installed here when missing (as .ci/run does), else skip."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
            env=env, capture_output=True, timeout=900, check=False,
        )  # fmt: skip
        found = shutil.which("chromium")
        if found:
            return found
    pytest.skip("chromium is not installed and could not be installed (apt-get install chromium)")


class DevTools:
    """Chromium driven over the DevTools protocol on a pipe (fds 3 and 4 of the browser:
    NUL-separated JSON messages), with every event kept."""

    def __init__(self, exe: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds() -> None:
            r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--disable-background-networking", "--disable-component-update", "--no-first-run",
             "--disable-sync", "--disable-extensions", "--hide-scrollbars",
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=child_fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.events: list[dict[str, Any]] = []
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._next = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session: str | None = None

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self._from_browser, 65536)
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    self._replies.put(message)
                else:
                    self.events.append(message)

    def call(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._replies.get(timeout=max(0.1, deadline - time.monotonic()))
            if reply["id"] == self._next:
                assert "error" not in reply, (method, reply["error"])
                return dict(reply.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e["method"] == method for e in self.events):
            assert time.monotonic() < deadline, f"no {method} within {timeout} s"
            time.sleep(0.05)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    tools = DevTools(chromium_path(), tmp_path / "profile")
    try:
        target = tools.call("Target.createTarget", url="about:blank")["targetId"]
        tools.session = tools.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Network", "Page"):
            tools.call(f"{domain}.enable")
        tools.call(
            "Emulation.setDeviceMetricsOverride",
            width=1280, height=1600, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip
        yield tools
    finally:
        tools.close()


def test_html_in_a_real_browser(scene: Audit, dsn: str, tmp_path: Path, browser: DevTools) -> None:
    page = tmp_path / "report.html"
    result = invoke(dsn, "report", "--title", "Incident review: shop", "--output", str(page))
    assert result.exit_code == 0, result.output
    url = page.as_uri()
    browser.call("Page.navigate", url=url)
    browser.wait_for("Page.loadEventFired")
    time.sleep(0.5)

    # Charts drawn: each has a canvas of non-zero size with painted pixels.
    charts = browser.evaluate(
        """Array.from(document.querySelectorAll('.chart')).map(function (el) {
             var c = el.querySelector('canvas'); if (!c) return [el.id, 0, 0, 0];
             var r = c.getBoundingClientRect();
             var px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, painted = 0;
             for (var i = 3; i < px.length; i += 4) if (px[i]) painted++;
             return [el.id, r.width, r.height, painted]; })"""
    )
    assert [c[0] for c in charts] == ["chart-tables", "chart-subjects"]
    for _id, width, height, painted in charts:
        assert width > 300 and height > 100 and painted > 1000, charts
    legend = browser.evaluate(
        "Array.from(document.querySelectorAll('#chart-subjects .u-legend .u-label'))"
        ".map(function (e) { return e.textContent; })"
    )
    assert "mallory" in legend and HOSTILE_ACTOR in legend  # as text, not markup

    # A timeline entry expands to its row diff, changed columns highlighted.
    hostile_tx = scalar(
        scene.conn,
        "SELECT txid::text FROM audit.transaction WHERE actor = %s",
        (HOSTILE_ACTOR,),
    )
    probe = f"""(function () {{
        var d = document.getElementById('tx-{hostile_tx}');
        var table = d.querySelector('.change table.diff');
        var before = [d.getBoundingClientRect().height, table.checkVisibility()];
        d.querySelector('summary').click();
        var rows = Array.from(table.querySelectorAll('tr.changed'));
        return {{before: before, after: [d.getBoundingClientRect().height, table.checkVisibility()],
                 open: d.open, tableHeight: table.getBoundingClientRect().height,
                 changed: rows.map(function (r) {{ return r.cells[0].textContent; }}),
                 cells: rows.map(function (r) {{ return r.cells[2].textContent; }}),
                 scripts: document.scripts.length}};
    }})()"""
    seen = browser.evaluate(probe)
    assert seen["before"][1] is False and seen["after"][1] is True and seen["open"] is True, seen
    assert seen["after"][0] > seen["before"][0] + seen["tableHeight"] > seen["before"][0], seen
    assert sorted(seen["changed"]) == ["email", "name", "note"], seen
    assert HOSTILE_NOTE in seen["cells"] and UNICODE in seen["cells"] and "NULL" in seen["cells"]
    assert seen["scripts"] == 3  # the hostile values added none

    # The screenshot, for a person to look at.
    browser.evaluate("window.scrollTo(0, 0)")
    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    assert shot.startswith(b"\x89PNG") and len(shot) > 20_000
    (tmp_path / "report.png").write_bytes(shot)
    keep = os.environ.get("PGAUDIT_REPORT_SCREENSHOT")
    if keep:
        Path(keep).write_bytes(shot)

    # Printing works (the print stylesheet applies; charts are not clipped).
    browser.call("Emulation.setEmulatedMedia", media="print")
    clipped = browser.evaluate(
        """Array.from(document.querySelectorAll('.chart canvas')).filter(function (c) {
             return c.getBoundingClientRect().right > document.documentElement.clientWidth; }).length"""
    )
    assert clipped == 0
    pdf = base64.b64decode(browser.call("Page.printToPDF", timeout=120)["data"])
    assert pdf.startswith(b"%PDF")

    errors = [
        e for e in browser.events
        if e["method"] == "Runtime.exceptionThrown"
        or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
        or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]  # fmt: skip
    assert errors == []
    requests = [
        e["params"]["request"]["url"]
        for e in browser.events
        if e["method"] == "Network.requestWillBeSent"
    ]
    assert requests == [url]
