"""Measure history read through an archive of many changes (``history_archive_*``).

    python -m tests.measure_archive [--changes 10000000] [--dsn DSN] [--major 15]

The measurement of ``pgaudit-tool bench``'s archive reading phase
(:mod:`pgaudit_tool.bench.archive_reading`) alone, in a fresh database: a throwaway cluster
unless ``--dsn`` names an empty database. Prints JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from pgaudit_tool.bench.archive_reading import measure
from tests.measure_upgrade import target


def main(argv: list[str] | None = None) -> int:
    with ExitStack() as stack:
        dsn, changes = target(argv, __doc__ or "", 10_000_000, stack)
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgaudit-arch-")))
        json.dump(measure(dsn, changes, directory), sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
