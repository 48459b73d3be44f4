"""Watch phase: how fast the watcher evaluates changes, how late its alerts come, and whether a
running watcher costs capture anything.

- ``watch_changes_per_s``: a log of ``watch_changes`` changes (transactions of 10 rows, three
  actors) is written after the watcher's cursor; one pass evaluates it with every built-in
  detector on and stores its alerts.
- ``watch_lag_ms_p95``: the watcher runs at its default interval (1 s) while one client updates
  rows without pause and another commits an incident (a TRUNCATE) every half second; the lag is
  from each incident's commit to its alert reaching the watcher's callback.
- ``watch_capture_tps_ratio``: single-row UPDATE TPS on the audited table with the watcher
  running, over the same without it, alternating; medians of the ratios.
- ``guard_cost_us``: what a guard adds to a single-row UPDATE of a guarded table
  (bench/guardcost.py), and ``guard_never_guarded_delta_us``: what a table without a guard pays
  while another has one (noise around zero).
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from pgaudit_tool import detect
from pgaudit_tool.bench.config import AUDITED
from pgaudit_tool.bench.driver import driver_tps
from pgaudit_tool.bench.guardcost import guard_cost
from pgaudit_tool.bench.session import Session
from pgaudit_tool.bench.sql import single_update_sql
from pgaudit_tool.bench.stats import rounded
from pgaudit_tool.connection import connect
from pgaudit_tool.rules import default_rules
from pgaudit_tool.watch import Watcher

WATCHED, INCIDENT = "watched", "incident"

_FILL = """
CREATE PROCEDURE {proc}(p_transactions int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. p_transactions LOOP
        PERFORM pg_catalog.set_config('pgaudit.actor', (ARRAY['ann', 'ben', 'cy'])[1 + i % 3], true);
        INSERT INTO {table} (id, v) SELECT i * 10 + g, g FROM pg_catalog.generate_series(0, 9) AS g;
        COMMIT;
    END LOOP;
END
$$
"""


def watch_phase(s: Session) -> None:
    """The three figures above, into ``s.result``."""
    _setup(s)
    s.result["watch_changes_per_s"] = _evaluation_rate(s)
    s.result["watch_lag_ms_p95"] = _lag(s)
    s.result.update(_capture_with_watcher(s))
    s.progress("guards: single-row UPDATEs with and without a guard")
    costs = guard_cost(s.conninfo, rounds=max(3, s.config.repetitions))
    s.result["guard_cost_us"] = costs["guard_cost_us"]
    s.result["guard_cost_us_range"] = costs["guard_cost_us_range"]
    s.result["guard_never_guarded_delta_us"] = costs["never_guarded_delta_us"]


def _setup(s: Session) -> None:
    for name in (WATCHED, INCIDENT):
        s.conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, v int)").format(s.table(name))
        )
        s.set_audit(s.oid(name), on=True)


def _watcher(s: Session, conn: psycopg.Connection[Any], **kwargs: Any) -> Watcher:
    return Watcher(conn, default_rules(), name=f"bench {s.scratch}", exclusive=False, **kwargs)


def _evaluation_rate(s: Session) -> float | None:
    total = s.config.watch_changes
    with connect(s.conninfo) as conn:
        watcher = _watcher(s, conn)
        watcher.start()
        s.progress(f"watch: writing {total} changes after the watcher's cursor")
        proc = sql.Identifier(s.scratch, "fill")
        s.conn.execute(sql.SQL(_FILL).format(proc=proc, table=s.table(WATCHED)))
        s.conn.execute(sql.SQL("CALL {}(%s)").format(proc), [max(1, total // 10)])
        start = time.perf_counter()
        watcher.pass_once()
        elapsed = time.perf_counter() - start
    rate = watcher.evaluated / elapsed if elapsed > 0 else None
    s.progress(f"  watcher evaluated {watcher.evaluated} changes in {elapsed:.1f} s")
    return None if rate is None else rounded(rate, 0)


def _lag(s: Session) -> float | None:
    seen: dict[int, float] = {}
    committed: dict[int, float] = {}
    stop = threading.Event()

    def emit(f: detect.Finding) -> None:
        for txid in f.txids:
            seen.setdefault(txid, time.time())

    with connect(s.conninfo) as conn:
        watcher = _watcher(s, conn, emit=emit, stop=stop)
        watcher.start()
        worker = threading.Thread(target=watcher.run, kwargs={"interval": 1.0})
        load = threading.Thread(target=_background_updates, args=(s, stop))
        worker.start()
        load.start()
        try:
            _incidents(s, committed, s.config.duration)
            time.sleep(2.5)
        finally:
            stop.set()
            worker.join()
            load.join()
    lags = [(seen[t] - at) * 1000 for t, at in committed.items() if t in seen]
    missing = len(committed) - len(lags)
    if missing:
        s.notes.append(f"watch lag: {missing} incident(s) raised no alert within 2.5 s of the end")
    if len(lags) < 2:
        return None
    s.progress(f"  alert lag: median {statistics.median(lags):.0f} ms over {len(lags)} incidents")
    return rounded(statistics.quantiles(lags, n=20)[-1], 0)


def _incidents(s: Session, committed: dict[int, float], duration: float) -> None:
    table = s.table(INCIDENT)
    with psycopg.connect(s.conninfo, autocommit=True) as conn:
        end = time.time() + duration
        i = 0
        while time.time() < end:
            with conn.transaction():
                row = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
                conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, 0)").format(table), [i])
                conn.execute(sql.SQL("TRUNCATE {}").format(table))
            committed[int(row[0]) if row else -1] = time.time()
            i += 1
            time.sleep(0.5)


def _background_updates(s: Session, stop: threading.Event) -> None:
    table = s.table(WATCHED)
    with psycopg.connect(s.conninfo, autocommit=True) as conn:
        i = 0
        while not stop.is_set():
            conn.execute(sql.SQL("UPDATE {} SET v = v + 1 WHERE id = %s").format(table), [i % 1000])
            i += 1


def _capture_with_watcher(s: Session) -> dict[str, Any]:
    stmt = single_update_sql(s.table(AUDITED), "%(id)s")
    ratios = []
    for rep in range(s.config.repetitions):
        runs: dict[bool, float] = {}
        for watching in (rep % 2 == 0, rep % 2 != 0):
            runs[watching] = _tps(s, stmt, watching)
        ratios.append(runs[True] / runs[False])
        s.progress(f"  capture with/without watcher: {ratios[-1]:.3f}")
    return {
        "watch_capture_tps_ratio": rounded(statistics.median(ratios), 3),
        "watch_capture_tps_ratio_range": [rounded(min(ratios), 3), rounded(max(ratios), 3)],
    }


def _tps(s: Session, stmt: sql.Composable, watching: bool) -> float:
    if not watching:
        return driver_tps(s.conninfo, stmt, s.config.rows, s.config.clients, s.config.duration)
    stop = threading.Event()
    with connect(s.conninfo) as conn:
        watcher = _watcher(s, conn, stop=stop)
        watcher.start()
        worker = threading.Thread(target=watcher.run, kwargs={"interval": 1.0})
        worker.start()
        try:
            return driver_tps(s.conninfo, stmt, s.config.rows, s.config.clients, s.config.duration)
        finally:
            stop.set()
            worker.join()
