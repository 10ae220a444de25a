"""The shift report's numbers against hand-made records, the shift calendar, and the HTML / PDF output."""

from __future__ import annotations

import datetime as dt

import pytest
from typer.testing import CliRunner

from andon.cli import app as cli
from andon.errors import ConfigError
from andon.reports import shifts as cal
from andon.reports.render import find_chromium, to_html, write_html, write_pdf
from andon.reports.shift import build
from andon.service.db import make_engine, migrate, session_factory
from andon.service.review.verdicts import ClassInfo, record_verdict
from andon.service.tables import REVIEW_NOT_REQUIRED, REVIEW_UNREVIEWED, Inspection, new_id

START = dt.datetime(2026, 11, 25, 6, 0, tzinfo=dt.timezone.utc)
END = START + dt.timedelta(hours=8)


_NO_REASON = object()


def _frame(
    minute: int, camera: str, decision: str, part: str | None, *, image: bool = False, reason=_NO_REASON
) -> Inspection:
    label = {"pass": "ok", "review": "ok", "reject": "scratch"}[decision]
    return Inspection(
        id=new_id(),
        created_at=START + dt.timedelta(minutes=minute),
        line_id="L1",
        camera_id=camera,
        part_id=part,
        serial=None,
        label=label,
        decision=decision,
        defect_score={"pass": 0.05, "review": 0.5, "reject": 0.9}[decision],
        scores={"ok": 0.5, "scratch": 0.3, "dent": 0.2},
        reasons=[],
        reason={"pass": "pass", "review": "defect", "reject": "defect"}[decision] if reason is _NO_REASON else reason,
        model_version="3",
        model_hash="b" * 64,
        image_format="JPEG",
        image_width=64,
        image_height=48,
        image_bytes=10,
        body_sha256="0" * 64,
        image_key=f"k/{minute}-{camera}.jpg" if image or decision != "pass" else None,
        review_status=REVIEW_NOT_REQUIRED if decision == "pass" else REVIEW_UNREVIEWED,
        timings_ms={},
    )


@pytest.fixture
def shift_db(tmp_path):
    """Five parts seen by two cameras, two frames without a part, one frame before the shift; verdicts."""
    engine = make_engine(f"sqlite:///{tmp_path / 'andon.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    cam1 = ["pass", "pass", "review", "reject", "pass"]
    cam2 = ["pass", "review", "pass", "pass", "pass"]
    rows = {}
    for i in range(5):
        reason = "unknown defect" if i == 2 else _NO_REASON  # P2-cam1: passed by the classifier, flagged by anomaly
        rows[f"P{i}-cam1"] = _frame(10 * i, "cam1", cam1[i], f"P{i}", image=i == 0, reason=reason)
        rows[f"P{i}-cam2"] = _frame(10 * i + 1, "cam2", cam2[i], f"P{i}", image=i == 4)
    rows["X-cam1"] = _frame(100, "cam1", "reject", None, reason=None)  # a record from before reasons were stored
    rows["Y-cam2"] = _frame(101, "cam2", "pass", None)
    rows["early"] = _frame(-60, "cam1", "reject", "P9")
    info = lambda row: ClassInfo.from_scores(row.scores)  # noqa: E731
    with sessions() as s:
        s.add_all(rows.values())
        s.commit()
        for key, verdict, label in [
            ("P1-cam2", "confirm_defect", "dent"),
            ("P2-cam1", "false_alarm", None),
            ("P3-cam1", "confirm_defect", None),
            ("X-cam1", "cant_tell", None),
            ("P0-cam1", "confirm_defect", "scratch"),  # an audited pass: an escape
            ("P4-cam2", "false_alarm", None),
            ("early", "confirm_defect", None),
        ]:
            record_verdict(
                s,
                rows[key].id,
                verdict=verdict,
                label=label,
                reviewer="olga" if key != "P3-cam1" else "ivan",
                comment="caught at audit" if key == "P0-cam1" else None,
                info_for=info,
            )
    yield sessions, rows
    engine.dispose()


def test_report_numbers_match_the_records(shift_db):
    sessions, rows = shift_db
    with sessions() as s:
        r = build(s, START, END, line_id="L1")
    assert r.frames == 12 and r.decisions == {"pass": 8, "review": 2, "reject": 2}
    assert r.parts == 7 and r.part_decisions == {"pass": 3, "review": 2, "reject": 2}
    assert [(c.camera_id, c.frames, c.passed, c.review, c.reject) for c in r.cameras] == [
        ("cam1", 6, 3, 1, 2),
        ("cam2", 6, 5, 1, 0),
    ]
    assert r.rate("reject") == pytest.approx(2 / 12)
    assert (r.flagged, r.reviewed, r.confirmed, r.false_alarms, r.cant_tell, r.waiting) == (4, 4, 2, 1, 1, 0)
    assert r.relabelled == 0  # P1-cam2 was unsure ("ok"): confirming it as dent is not a re-label
    assert r.agreement == pytest.approx(2 / 3)
    assert r.top_confirmed == [("scratch", 2), ("dent", 1)] and r.top_model == [("scratch", 2)]
    assert r.audited_passes == 2 and [(e.part_id, e.label, e.comment) for e in r.escapes] == [
        ("P0", "scratch", "caught at audit")
    ]
    assert [(m.version, m.frames) for m in r.models] == [("3", 12)]
    assert r.models[0].first == START and r.models[0].last == START + dt.timedelta(minutes=101)
    assert r.reviewers == {"olga": 5, "ivan": 1}
    assert [(f.signal, f.frames, f.share, f.detail) for f in r.flagged_by] == [
        ("classifier", 2, 0.5, {}),
        ("anomaly", 1, 0.25, {"unknown defect": 1}),
        ("not_recorded", 1, 0.25, {}),
    ]


def test_report_html_is_standalone_and_says_what_it_counts(shift_db, tmp_path):
    sessions, _ = shift_db
    with sessions() as s:
        r = build(s, START, END, line_id="L1", title="Shift report: 2026-11-25 shift A")
    html = to_html(r)
    assert "Shift report: 2026-11-25 shift A" in html and "16.67%" in html  # reject rate 2/12
    assert "caught at audit" in html and "version 3 (bbbbbbbbbbbb)" in html
    assert "Flagged by signal" in html and "unknown defect 1" in html
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    path = write_html(r, tmp_path / "r.html")
    assert path.read_text() == html


def test_pdf_is_printed_by_chromium(shift_db, tmp_path):
    if find_chromium() is None:
        pytest.skip("no chromium binary (apt-get install chromium): PDF printing is not available")
    sessions, _ = shift_db
    with sessions() as s:
        r = build(s, START, END)
    pdf = write_pdf(write_html(r, tmp_path / "r.html"), tmp_path / "r.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 10_000


def test_shift_calendar():
    defs = cal.parse_shifts(cal.DEFAULT_SHIFTS)
    night = cal.resolve("2026-11-25/C", defs)
    assert night.end - night.start == dt.timedelta(hours=8) and night.start.hour == 22
    assert night.end.date() == dt.date(2026, 11, 26)
    now = dt.datetime(2026, 11, 25, 15, 0).astimezone()
    assert cal.resolve("last", defs, now=now).name == "A"
    assert cal.resolve("current", defs, now=now).name == "B"
    with pytest.raises(ConfigError, match="NAME=HH:MM-HH:MM"):
        cal.parse_shifts("A=6-14")
    with pytest.raises(ConfigError, match="one of A, B, C"):
        cal.resolve("2026-11-25/D", defs)


def test_report_cli(shift_db, tmp_path):
    sessions, _ = shift_db
    db_url = str(sessions.kw["bind"].url)
    out = tmp_path / "shift.html"
    r = CliRunner().invoke(
        cli,
        [
            "report",
            "--from",
            START.isoformat(),
            "--to",
            END.isoformat(),
            "--line",
            "L1",
            "--database-url",
            db_url,
            "--data-dir",
            str(tmp_path),
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "12 frames, 7 parts" in r.output and "4/4 flagged frames reviewed, 1 escapes" in r.output
    assert out.is_file()
    bad = CliRunner().invoke(cli, ["report", "--data-dir", str(tmp_path)])
    assert bad.exit_code != 0
