"""Opening a store: where the database lives, connecting, migrating.

``open_store()`` is the one entry point. It resolves the URL (argument, then
``$EGRESSWATCH_DB``, then ``$XDG_DATA_HOME/egresswatch/egresswatch.db``),
creates a SQLite file with mode 0600 in a 0700 folder, sets WAL, runs the
alembic migrations to head, and wraps every SQLAlchemy/psycopg error in a
:class:`~egresswatch.errors.StoreError` that says what to fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

if TYPE_CHECKING:
    from alembic.config import Config

from egresswatch.errors import StoreError
from egresswatch.store.schema import ALERTS, DNS_ANSWERS, FINDINGS, FLOWS, Flow

if TYPE_CHECKING:
    from egresswatch.store.remote import RemoteWriter
    from egresswatch.store.retention import Retention
    from egresswatch.store.writer import StoreWriter

ENV_VAR = "EGRESSWATCH_DB"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"

#: seconds to wait for a locked SQLite database before failing a statement
#: (https://www.sqlite.org/c3ref/busy_timeout.html)
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: page cache per connection, KiB
SQLITE_CACHE_KIB = 65_536
#: seconds psycopg waits for a PostgreSQL connection; short, so an outage is
#: noticed quickly and decisions go to the spill journal
#: (https://www.postgresql.org/docs/15/libpq-connect.html#LIBPQ-CONNECT-CONNECT-TIMEOUT)
PG_CONNECT_TIMEOUT_S = 3


def data_dir() -> Path:
    """``$XDG_DATA_HOME/egresswatch`` (XDG Base Directory spec; default ``~/.local/share``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "egresswatch"


def default_url() -> str:
    """The database URL used when none is given: ``$EGRESSWATCH_DB`` or the XDG default file."""
    env = os.environ.get(ENV_VAR)
    if env:
        return normalise_url(env)
    return "sqlite:///" + str(data_dir() / "egresswatch.db")


def normalise_url(value: str) -> str:
    """Accept a SQLAlchemy URL or a plain file path (taken as a SQLite database)."""
    value = value.strip()
    if not value:
        raise StoreError("empty database URL")
    if "://" not in value:
        return "sqlite:///" + str(Path(value).expanduser().resolve())
    if value.startswith(("postgresql://", "postgres://")):
        # psycopg 3 is the driver egresswatch ships with (pyproject), not psycopg2
        value = "postgresql+psycopg://" + value.split("://", 1)[1]
    return value


def display_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _prepare_sqlite_file(path: Path) -> None:
    """Create the folder (0700) and the database file (0600) before SQLite does.

    SQLite gives its -wal and -shm files the permissions of the database file
    (unix VFS, ``findCreateFileMode``), so they are 0600 too.
    """
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers (flows, tail, report) never block the writer thread and a
    # kill -9 leaves every committed transaction intact (https://www.sqlite.org/wal.html).
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable against process crashes in WAL mode; only a power loss
    # may lose the last commits (https://www.sqlite.org/pragma.html#pragma_synchronous).
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    # a bigger page cache (default 2 MiB) keeps the random-keyed decision_id and flow_id
    # indexes in memory between batches; negative = KiB (https://www.sqlite.org/pragma.html#pragma_cache_size)
    cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    # checkpoint every ~40 MB of WAL instead of ~4 MB: fewer checkpoint stalls inside
    # the writer's commits (https://www.sqlite.org/wal.html#automatic_checkpoint)
    cur.execute("PRAGMA wal_autocheckpoint=10000")
    cur.close()


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """What ``egresswatch db info`` shows."""

    url: str
    dialect: str
    revision: str | None
    head: str
    flows: int
    findings: int
    alerts: int
    dns_answers: int
    oldest: float | None
    newest: float | None
    path: str | None
    size_bytes: int | None


class Store:
    """An open database: an engine, and the writer that feeds it."""

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @property
    def display_url(self) -> str:
        return display_url(self.url)

    @property
    def path(self) -> Path | None:
        """The database file for SQLite, else None."""
        if self.dialect != "sqlite":
            return None
        database = make_url(self.url).database
        return Path(database) if database and database != ":memory:" else None

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection inside a transaction; database errors become StoreError."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as e:
            raise StoreError(f"database error on {self.display_url}: {_short(e)}") from e

    def writer(
        self,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        queue_size: int = 100_000,
        spill_path: str | os.PathLike[str] | None = None,
        node: str | None = None,
        retention: Retention | None = None,
        raw_bodies: int = 0,
        process: bool = False,
    ) -> StoreWriter | RemoteWriter:
        """Start a :class:`~egresswatch.store.writer.StoreWriter` (a ``ports.Sink``) on this store.

        ``spill_path`` is the journal used while the database is unreachable;
        by default ``<db file>.spill.jsonl`` for SQLite, else a file in the data
        folder named after this URL. ``node`` names this sensor in a central
        store (default: the host name). ``retention`` makes the writer prune by
        itself (see :mod:`egresswatch.store.retention`). ``raw_bodies`` > 0 is the
        user's opt-in to keep that many bytes of each request body raw
        (``payload_excerpts``); 0, the default, stores no body byte.

        ``process=True`` writes from a child process (:class:`~egresswatch.store.remote.
        RemoteWriter`): the SQL then runs beside the sensor, not under its GIL.
        """
        spill = Path(spill_path) if spill_path else self.default_spill_path()
        if process:
            from egresswatch.store.remote import RemoteWriter

            return RemoteWriter(
                self.url,
                dialect=self.dialect,
                batch_size=batch_size,
                flush_interval=flush_interval,
                queue_size=queue_size,
                spill_path=spill,
                node=node if node is not None else socket.gethostname(),
                retention=retention,
                raw_bodies=raw_bodies,
            )
        from egresswatch.store.writer import StoreWriter

        return StoreWriter(
            self,
            batch_size=batch_size,
            flush_interval=flush_interval,
            queue_size=queue_size,
            spill_path=spill,
            node=node,
            retention=retention,
            raw_bodies=raw_bodies,
        )

    def default_spill_path(self) -> Path:
        """``<data dir>/spill-<hash of URL>.jsonl``: one journal per database."""
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:12]
        if self.path is not None:
            return self.path.with_name(self.path.name + ".spill.jsonl")
        return data_dir() / f"spill-{digest}.jsonl"

    def revision(self) -> str | None:
        """The alembic revision the database is at (None: empty database)."""
        with self.connect() as conn:
            return current_revision(conn)

    def upgrade(self) -> tuple[str | None, str]:
        """Migrate to head; return (revision before, revision after)."""
        return upgrade(self.engine, self.display_url)

    def info(self) -> StoreInfo:
        """Revision, row counts and time range."""
        with self.connect() as conn:
            rev = current_revision(conn)
            counts = {
                name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                for name, table in (
                    ("flows", FLOWS),
                    ("findings", FINDINGS),
                    ("alerts", ALERTS),
                    ("dns_answers", DNS_ANSWERS),
                )
            }
            oldest, newest = conn.execute(select(func.min(Flow.ts), func.max(Flow.ts))).one()
        path = self.path
        size = None
        if path is not None and path.exists():
            size = sum(
                p.stat().st_size
                for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
                if p.exists()
            )
        return StoreInfo(
            url=self.display_url,
            dialect=self.dialect,
            revision=rev,
            head=head_revision(),
            flows=counts["flows"],
            findings=counts["findings"],
            alerts=counts["alerts"],
            dns_answers=counts["dns_answers"],
            oldest=oldest,
            newest=newest,
            path=str(path) if path else None,
            size_bytes=size,
        )

    def close(self) -> None:
        """Release all connections."""
        self.engine.dispose()


def _short(e: BaseException) -> str:
    """The first line of a driver error, without SQLAlchemy's background link."""
    orig = getattr(e, "orig", None)
    text = str(orig if orig is not None else e).strip()
    return text.splitlines()[0] if text else type(e).__name__


#: the newest migration in store/migrations (tests/test_store.py checks it against alembic's
#: own answer): a database already there is opened without importing alembic, which took
#: a quarter of a second of every `flows` and `report` (bench/store.py)
SCHEMA_HEAD = "0005"


def current_revision(conn: Connection) -> str | None:
    """The revision in ``alembic_version`` (None: no such table or no row)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def _quick_revision(conn: Connection) -> str | None:
    """``alembic_version`` read with plain SQL; None when it is missing or ambiguous."""
    try:
        rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").fetchall()
    except SQLAlchemyError:  # no table yet (or no database): the full path decides
        return None
    return str(rows[0][0]) if len(rows) == 1 else None


def _alembic_config(conn: Connection) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str:
    """The newest migration this egresswatch knows (asks alembic; see :data:`SCHEMA_HEAD`)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def upgrade(engine: Engine, shown_url: str) -> tuple[str | None, str]:
    """Run migrations to head on ``engine``; never drops data. Returns (before, after)."""
    try:
        with engine.connect() as conn:
            if _quick_revision(conn) == SCHEMA_HEAD:
                return SCHEMA_HEAD, SCHEMA_HEAD  # up to date: nothing for alembic to do
    except SQLAlchemyError as e:
        raise StoreError(f"cannot migrate {shown_url}: {_short(e)}") from e
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = head_revision()
    known = {s.revision for s in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}
    try:
        with engine.begin() as conn:
            before = MigrationContext.configure(conn).get_current_revision()
            if before is not None and before not in known:
                raise StoreError(
                    f"{shown_url} is at schema revision {before}, newer than this egresswatch "
                    f"knows (head {head}); upgrade egresswatch instead of the database"
                )
            if before != head:
                command.upgrade(_alembic_config(conn), "head")
    except SQLAlchemyError as e:
        raise StoreError(f"cannot migrate {shown_url}: {_short(e)}") from e
    return before, head


def create_store_engine(url: str) -> Engine:
    """An engine for ``url`` with egresswatch's connection settings (no I/O yet)."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StoreError(
            f"not a database URL: {url!r} (expected sqlite:///PATH, "
            "postgresql+psycopg://USER@HOST:PORT/DB or a file path)"
        ) from e
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    if backend == "postgresql":
        try:
            return create_engine(
                url,
                pool_pre_ping=True,
                connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S},
            )
        except (NoSuchModuleError, ModuleNotFoundError) as e:
            raise StoreError(
                f"no driver for {display_url(url)}: {e}; use postgresql+psycopg://"
            ) from e
    raise StoreError(
        f"unsupported database {display_url(url)}: egresswatch supports SQLite and PostgreSQL"
    )


def open_store(url: str | None = None, *, migrate: bool = True, must_exist: bool = False) -> Store:
    """Open (and by default migrate to head) the database at ``url``.

    ``url`` may be a SQLAlchemy URL or a plain file path; None means
    ``$EGRESSWATCH_DB`` or ``$XDG_DATA_HOME/egresswatch/egresswatch.db``.
    ``must_exist`` (for commands that only read) refuses to create a new SQLite
    file, so a mistyped ``--db`` path is an error rather than an empty result.
    Raises :class:`StoreError` with a message naming the database when it cannot
    be reached, created or migrated.
    """
    url = normalise_url(url) if url else default_url()
    engine = create_store_engine(url)
    shown = display_url(url)
    store = Store(url, engine)
    if engine.dialect.name == "sqlite":
        path = store.path
        if path is not None and must_exist and not path.exists():
            engine.dispose()
            raise StoreError(
                f"no database at {path}: nothing recorded yet, or pass --db / set {ENV_VAR}"
            )
        if path is not None:
            try:
                _prepare_sqlite_file(path)
            except OSError as e:
                raise StoreError(f"cannot create SQLite database {path}: {e.strerror}") from e
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except SQLAlchemyError as e:
        engine.dispose()
        where = "PostgreSQL at " if engine.dialect.name == "postgresql" else ""
        raise StoreError(f"cannot connect to {where}{shown}: {_short(e)}") from e
    if migrate:
        try:
            upgrade(engine, shown)
        except StoreError:
            engine.dispose()
            raise
    return store
