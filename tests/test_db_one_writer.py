"""db.one_writer: the threads of one process take turns at SQLite's single writer lock on a Python lock, so no
thread waits in SQLite's busy handler (which sleeps 1, 2, 5, 10 ... ms between tries)."""

from __future__ import annotations

import contextlib
import threading

from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from andon.service.db import one_writer


def _writers(engine, guard, threads: int = 8, each: int = 40) -> list[Exception]:
    errors: list[Exception] = []

    def work(k: int) -> None:
        for i in range(each):
            try:
                with guard(engine), engine.begin() as conn:
                    conn.execute(text("INSERT INTO t (k, i) VALUES (:k, :i)"), {"k": k, "i": i})
            except OperationalError as exc:  # "database is locked": the busy handler gave up at once
                errors.append(exc)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return errors


def _engine(path):
    # busy timeout 0: a writer that finds the lock taken fails at once instead of sleeping in the busy handler
    engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 0})
    with engine.begin() as conn:
        conn.execute(text("PRAGMA journal_mode=WAL"))
        conn.execute(text("CREATE TABLE t (k INTEGER, i INTEGER)"))
    return engine


def test_writers_of_one_process_never_meet_at_sqlites_lock(tmp_path):
    engine = _engine(tmp_path / "a.db")
    assert _writers(engine, one_writer) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 8 * 40


def test_without_it_they_do(tmp_path):
    """The control: the same writers without the lock collide (what the busy handler otherwise sleeps on)."""
    engine = _engine(tmp_path / "b.db")
    assert _writers(engine, lambda _e: contextlib.nullcontext()), "no collision: the test could not tell"


def test_other_databases_get_no_lock():
    engine = create_engine("postgresql+psycopg://u:p@127.0.0.1:1/x")  # never connected
    with one_writer(engine), one_writer(engine):  # no lock: nesting would deadlock on one
        pass
