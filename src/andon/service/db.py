"""Database engine, sessions and migrations. SQLite (WAL, synchronous=FULL) by default, PostgreSQL by URL.

A committed transaction is on disk: SQLite runs in WAL mode with ``synchronous=FULL`` (the WAL is fsynced
at every commit), PostgreSQL with its default ``fsync``/``synchronous_commit``. The schema is created and
upgraded by Alembic (``migrate``), never by ``metadata.create_all``, so that the migrations are what runs.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from andon.errors import ConfigError

_PG_MIGRATION_LOCK = 0x616E646F6E  # "andon": serialises migrations of workers starting together


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    """An engine for ``url`` with durability pragmas on SQLite."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"database_url {url!r} is not a SQLAlchemy URL (sqlite:///path or postgresql+psycopg://user:pass@host/db)"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver the [serve] extra ships
    return create_engine(parsed, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


#: what every SQLite connection runs first. ``synchronous=FULL`` fsyncs the WAL at every commit, so a commit
#: (and the 2xx after it) survives a power cut; NORMAL would fsync only at checkpoints and lose the last
#: commits (tests/test_durability_power.py runs that variant and sees the loss).
SQLITE_PRAGMAS: tuple[str, ...] = ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    for pragma in SQLITE_PRAGMAS:
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


_WRITERS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


@contextlib.contextmanager
def one_writer(engine: Engine | None) -> Iterator[None]:
    """On SQLite, the threads of this process write one transaction at a time, queued on a Python lock.

    SQLite takes one writer at a time anyway; a second thread's INSERT would wait in SQLite's busy handler,
    which sleeps 1, 2, 5, 10, 15, 20, 25 ... ms between tries, so under load a frame's commit waited for
    the next wake-up, not for the writer before it. The lock hands the database over the moment the commit
    before is done. Other processes (the CLI, uvicorn workers) still meet at SQLite's own lock. PostgreSQL
    (row locks, concurrent writers) and an unknown engine: no lock.
    """
    if engine is None or engine.dialect.name != "sqlite":
        yield
        return
    with _WRITERS_LOCK:
        lock = _WRITERS.setdefault(engine, threading.Lock())
    with lock:
        yield


@contextlib.contextmanager
def writing(sessions: Any) -> Iterator[Session]:
    """A session from ``sessions`` (a sessionmaker) for one short write transaction, under ``one_writer``.

    For the hot writers (a frame's records, the outbox marks, the refusals' rows); a transaction that reads for
    long before it writes must not hold the lock."""
    with one_writer(getattr(sessions, "kw", {}).get("bind")), sessions() as session:
        yield session


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine | None = None) -> Any:
    """An Alembic config pointing at the packaged migrations (and at ``engine``'s connection when given)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "andon.service:migrations")
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (idempotent; safe when several workers start at once)."""
    from alembic import command

    cfg = alembic_config(engine)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (a migration's own down step; for tests and a rollback by hand)."""
    from alembic import command

    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def check_writable(engine: Engine) -> None:
    """Raise if the database cannot be reached (a read; writes are checked by every insert)."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def integrity_problems(engine: Engine) -> list[str]:
    """SQLite's ``PRAGMA integrity_check`` (every page, index and constraint): [] when the file is sound, else
    its findings. PostgreSQL checks its own pages (checksums, WAL replay): [] there."""
    if engine.dialect.name != "sqlite":
        return []
    with engine.connect() as conn:
        rows = [str(r[0]) for r in conn.execute(text("PRAGMA integrity_check"))]
    return [] if rows == ["ok"] else rows


def sqlite_folder(engine: Engine) -> Path | None:
    """The folder of a file-backed SQLite database (for its free-space check), else None."""
    if engine.dialect.name != "sqlite" or not engine.url.database or engine.url.database == ":memory:":
        return None
    return Path(engine.url.database).resolve().parent
