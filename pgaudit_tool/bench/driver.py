"""The built-in single-row driver: threads of this process, when pgbench is not available."""

from __future__ import annotations

import random
import threading
import time

from psycopg import sql

from pgaudit_tool.connection import connect


def driver_tps(
    conninfo: str, stmt: sql.Composable, rows: int, clients: int, duration: float
) -> float:
    """TPS of ``clients`` threads, each on its own autocommit connection, running ``stmt``
    (``%(id)s``, as often as it needs: a random id in 1..rows) for ``duration`` seconds."""
    stop = threading.Event()
    ready = threading.Barrier(clients + 1)
    counts = [0] * clients
    errors: list[BaseException] = []
    threads = [
        threading.Thread(
            target=_driver_client,
            args=(conninfo, stmt, rows, (ready, stop), (counts, i, errors)),
            daemon=True,
        )
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    try:
        ready.wait(timeout=60)
        start = time.perf_counter()
        stop.wait(duration)
    except threading.BrokenBarrierError:
        pass  # a client failed to connect: its error is in ``errors``
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


def _driver_client(
    conninfo: str,
    stmt: sql.Composable,
    rows: int,
    sync: tuple[threading.Barrier, threading.Event],
    out: tuple[list[int], int, list[BaseException]],
) -> None:
    ready, stop = sync
    counts, slot, errors = out
    rng = random.Random(slot)
    try:
        with connect(conninfo) as conn:
            query = stmt.as_string(conn)
            ready.wait(timeout=60)
            while not stop.is_set():
                conn.execute(query, {"id": rng.randint(1, rows)}, prepare=True)
                counts[slot] += 1
    except BaseException as exc:  # reported by driver_tps
        errors.append(exc)
        stop.set()
        ready.abort()
