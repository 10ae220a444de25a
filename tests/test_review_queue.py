"""The review queue: newest first, keyset pages that neither skip nor repeat (ties included), filters,
counts, the next part after a verdict, and index use at scale (SQLite query plans)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text

from andon.errors import ConfigError
from andon.service.db import make_engine, migrate, session_factory
from andon.service.review import queue as q
from andon.service.tables import REVIEW_NOT_REQUIRED, REVIEW_UNREVIEWED, Inspection, new_id

T0 = dt.datetime(2026, 11, 25, 6, 0, tzinfo=dt.timezone.utc)


def frame(
    at: dt.datetime,
    decision: str = "reject",
    *,
    line: str = "L1",
    camera: str = "cam1",
    status: str | None = None,
    image: bool = True,
    ident: str | None = None,
) -> Inspection:
    return Inspection(
        id=ident or new_id(),
        created_at=at,
        line_id=line,
        camera_id=camera,
        part_id=None,
        label="scratch" if decision != "pass" else "ok",
        decision=decision,
        defect_score=0.9,
        scores={"ok": 0.1, "scratch": 0.9},
        reasons=[],
        model_version="1",
        model_hash="0" * 64,
        image_format="JPEG",
        image_width=64,
        image_height=48,
        image_bytes=1000,
        body_sha256="0" * 64,
        image_key=f"x/{at:%H%M%S%f}.jpg" if image else None,
        review_status=status or (REVIEW_NOT_REQUIRED if decision == "pass" else REVIEW_UNREVIEWED),
        timings_ms={},
    )


@pytest.fixture
def db(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    yield sessions
    engine.dispose()


def _ids(rows):
    return [r.id for r in rows]


def test_pages_are_newest_first_and_cover_the_queue_exactly_once(db):
    rows = []
    for i in range(57):
        at = T0 + dt.timedelta(seconds=i // 3)  # three frames per instant: ties on created_at
        rows.append(frame(at, "reject" if i % 2 else "review", ident=f"01K{i:023d}"))
    rows.append(frame(T0, "pass"))  # not flagged: never in the waiting queue
    with db() as s:
        s.add_all(rows)
        s.commit()
        seen, cursor = [], None
        while True:
            page = q.page(s, q.QueueFilter(), cursor=q.Cursor.decode(cursor) if cursor else None, limit=10)
            seen += page.items
            cursor = page.next_cursor
            if cursor is None:
                break
        expected = sorted((r for r in rows if r.decision != "pass"), key=lambda r: (r.created_at, r.id), reverse=True)
        assert _ids(seen) == _ids(expected)
        assert q.count(s, q.QueueFilter()) == 57
        assert q.waiting_counts(s) == {"waiting": 57, "escalated": 0}


def test_filters_by_decision_line_camera_and_time(db):
    with db() as s:
        s.add_all(
            [
                frame(T0, "reject", line="L1", camera="a"),
                frame(T0 + dt.timedelta(minutes=1), "review", line="L2", camera="b"),
                frame(T0 + dt.timedelta(minutes=2), "reject", line="L2", camera="b"),
            ]
        )
        s.commit()
        assert len(q.page(s, q.QueueFilter(decision="review")).items) == 1
        assert len(q.page(s, q.QueueFilter(line_id="L2")).items) == 2
        assert [r.camera_id for r in q.page(s, q.QueueFilter(camera_id="a")).items] == ["a"]
        late = q.QueueFilter(since=T0 + dt.timedelta(seconds=30))
        assert q.count(s, late) == 2
        assert q.count(s, q.QueueFilter(window="1h"), now=T0 + dt.timedelta(minutes=61, seconds=30)) == 1
        assert q.lines_and_cameras(s) == (["L1", "L2"], ["a", "b"])


def test_next_after_a_verdict_goes_older_then_wraps_to_the_newest(db):
    with db() as s:
        rows = [frame(T0 + dt.timedelta(minutes=i)) for i in range(3)]
        s.add_all(rows)
        s.commit()
        f = q.QueueFilter()
        newest, middle, oldest = rows[2], rows[1], rows[0]
        assert q.next_after(s, f, newest).id == middle.id
        assert q.next_after(s, f, oldest).id == newest.id  # end of the queue: back to the top
        only = q.QueueFilter(camera_id="nobody")
        assert q.next_after(s, only, newest) is None


def test_audit_queue_holds_sampled_passes_only(db):
    with db() as s:
        s.add_all([frame(T0, "pass", image=True), frame(T0, "pass", image=False), frame(T0, "reject")])
        s.commit()
        audit = q.page(s, q.QueueFilter(status="audit")).items
        assert [r.decision for r in audit] == ["pass"] and audit[0].image_key is not None
        assert q.count(s, q.QueueFilter(status="audit")) == 1


def test_bad_filters_and_cursors_are_refused_with_what_is_allowed():
    with pytest.raises(ConfigError, match="waiting"):
        q.QueueFilter(status="mine")
    with pytest.raises(ConfigError, match="not one this service gave out"):
        q.Cursor.decode("garbage")
    c = q.Cursor(T0, "01K" + "0" * 23)
    assert q.Cursor.decode(c.encode()) == c


def test_queue_queries_walk_the_indexes(db):
    """The plans SQLite picks: the queue index for the queue and its count, the partial index for audits,
    never a scan of the whole table (so pages stay fast at 100,000 records; bench/review.py measures it)."""
    with db() as s:
        s.add_all([frame(T0 + dt.timedelta(seconds=i), ("pass", "review", "reject")[i % 3]) for i in range(30)])
        s.commit()
        conn = s.connection()
        for f in (q.QueueFilter(), q.QueueFilter(camera_id="cam1"), q.QueueFilter(status="audit")):
            for decision in f.decisions:
                stmt = q._base(f, decision, None).order_by(Inspection.created_at.desc()).limit(51)
                compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
                plan = " ".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
                wanted = "ix_inspections_audit" if f.status == "audit" else "ix_inspections_queue"
                assert f"USING INDEX {wanted}" in plan, plan
                assert "SCAN inspections" not in plan, plan


def test_queue_and_verdicts_on_postgresql(postgres_server):
    """The same queries and the verdict history on a real PostgreSQL server (row lock, partial index)."""
    from andon.service.review.verdicts import ClassInfo, VerdictConflictError, history, record_verdict

    engine = make_engine(postgres_server.new_database())
    migrate(engine)
    sessions = session_factory(engine)
    try:
        with sessions() as s:
            rows = [frame(T0 + dt.timedelta(seconds=i // 2), ("review", "reject", "pass")[i % 3]) for i in range(30)]
            s.add_all(rows)
            s.commit()
            seen, cursor = [], None
            while True:
                page = q.page(s, q.QueueFilter(), cursor=q.Cursor.decode(cursor) if cursor else None, limit=7)
                seen += page.items
                cursor = page.next_cursor
                if cursor is None:
                    break
            flagged = sorted(
                (r for r in rows if r.decision != "pass"), key=lambda r: (r.created_at, r.id), reverse=True
            )
            assert _ids(seen) == _ids(flagged)
            assert q.count(s, q.QueueFilter(status="audit")) == 10
            info = lambda row: ClassInfo.from_scores(row.scores)  # noqa: E731
            first = record_verdict(s, flagged[0].id, verdict="confirm_defect", reviewer="olga", info_for=info)
            with pytest.raises(VerdictConflictError):
                record_verdict(s, flagged[0].id, verdict="false_alarm", reviewer="erik", info_for=info)
            record_verdict(s, flagged[0].id, verdict="cant_tell", reviewer="erik", supersedes=first.id, info_for=info)
            assert [v.verdict for v in history(s, flagged[0].id)] == ["confirm_defect", "cant_tell"]
            assert q.waiting_counts(s) == {"waiting": 19, "escalated": 1}
    finally:
        engine.dispose()
