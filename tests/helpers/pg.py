"""A throw-away PostgreSQL server from the Debian package, for tests and bench/store.py.

``initdb`` as the ``postgres`` user into a temporary directory it owns, listening
on 127.0.0.1 and a free port only, socket in the same directory; removed by
:meth:`PgServer.cleanup`. See /work/shared/reference/lab-notes.md ("PostgreSQL").
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def pg_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<ver>/bin`` with initdb and pg_ctl, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(found[-1]).parent if found else None


def why_no_postgres() -> str | None:
    """A reason PostgreSQL cannot run here, or None if it can."""
    if pg_bindir() is None:
        return "PostgreSQL server binaries not found (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no 'postgres' user to run the server"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in a temporary directory."""

    def __init__(self, fsync: bool = True, prefix: str = "egw-pg-") -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError(why_no_postgres())
        self.bindir = bindir
        self.fsync = fsync
        # /tmp itself, not pytest's 0700 tmp_path: the postgres user must reach it
        self.base = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.log = self.base / "server.log"
        self.sock.mkdir()
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            for p in (self.base, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            os.chmod(self.base, 0o700)
        self._initdb()

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        return ["runuser", "-u", "postgres", "--", *cmd] if self._as_postgres else cmd

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._cmd(*args), check=True, capture_output=True, text=True, timeout=timeout
        )

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",  # loopback only, throw-away cluster
            "--no-instructions",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sock}"
        if not self.fsync:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", opts, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        result = subprocess.run(
            self._cmd("pg_ctl", "-D", str(self.data), "status"), capture_output=True, text=True
        )
        return result.returncode == 0

    def createdb(self, name: str | None = None) -> str:
        """Create a database; return its SQLAlchemy URL."""
        name = name or "egw_" + uuid.uuid4().hex[:12]
        self._run("createdb", "-h", str(self.sock), "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def dropdb(self, name: str) -> None:
        self._run(
            "dropdb", "-h", str(self.sock), "-p", str(self.port), "-U", "postgres", "--force", name
        )

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def cleanup(self) -> None:
        """Stop the server (immediate) and remove its directory."""
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def wait_down(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the test session (fsync off: tests, not durability)."""
    reason = why_no_postgres()
    if reason:
        pytest.skip(reason)
    server = PgServer(fsync=False)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'egw.db'}"
        return
    server: PgServer = request.getfixturevalue("pg_server")
    name = "egw_" + os.urandom(6).hex()
    url = server.createdb(name)
    yield url
    server.dropdb(name)
