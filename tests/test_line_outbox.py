"""The line outbox: rows committed with the records (SQLite and PostgreSQL), strict order per sink while a sink
is down, the deadline rule, and the values and settings the line refuses."""

from __future__ import annotations

import datetime as dt

import pytest

from andon.errors import ConfigError
from andon.service.line.dispatcher import late_verdict
from andon.service.line.errors import LineValueError
from andon.service.line.messages import Verdict
from andon.service.line.modbus import FLAG_PART_ID_CUT, decode_part_id, encode_block, encode_part_id, wrap16
from andon.service.line.tables import LineOutbox
from andon.service.settings import Settings
from line_support import free_port, wait_for
from service_support import PASS, REJECT, client_for, db_url, jpeg, post_frame, settings_for  # noqa: F401


def outbox(client) -> list[LineOutbox]:
    with client.app.state.ctx.sessions() as session:
        return session.query(LineOutbox).order_by(LineOutbox.id).all()


def test_every_acknowledged_frame_has_its_outbox_rows_and_a_down_sink_holds_the_rest_back(
    tmp_path,
    tiny_model_path,
    db_url,  # noqa: F811
):
    nobody = free_port()  # nothing listens here: both sinks are down for the whole test
    settings = settings_for(
        tmp_path,
        tiny_model_path,
        db_url,
        line_sinks=["mqtt", "modbus"],
        mqtt_port=nobody,
        modbus_port=nobody,
        modbus_blocks={"cam1": 10},
        mqtt_timeout_s=0.2,
        modbus_timeout_s=0.2,
        line_retry_initial_s=0.02,
        line_retry_max_s=0.05,
    )
    with client_for(settings) as client:
        answers = []
        for i, (camera, value) in enumerate([("cam1", PASS), ("cam2", REJECT), ("cam1", REJECT)]):
            r = post_frame(client, jpeg(value, noise=i), camera=camera, part=f"P-{i}", serial=f"S{i}", idem=f"k{i}")
            assert r.status_code == 201, r.text
            answers.append(r.json())
        again = post_frame(client, jpeg(PASS, noise=0), camera="cam1", part="P-0", serial="S0", idem="k0")
        assert again.status_code == 201 and again.json()["id"] == answers[0]["id"]  # a replay adds no rows
        first = {}
        for sink in ("mqtt", "modbus"):
            first[sink] = wait_for(
                lambda sink=sink: next((r for r in outbox(client) if r.sink == sink and r.attempts >= 2), None),
                what=f"retries of the {sink} sink",
            )
        rows = outbox(client)
    by_sink = {s: [r for r in rows if r.sink == s] for s in ("mqtt", "modbus")}
    assert [r.inspection_id for r in by_sink["mqtt"]] == [a["id"] for a in answers]  # every frame, in order
    assert [r.inspection_id for r in by_sink["modbus"]] == [answers[0]["id"], answers[2]["id"]]  # cam2: no block
    for r in rows:
        a = next(a for a in answers if a["id"] == r.inspection_id)
        assert (r.part_id, r.serial, r.camera_id, r.decision) == (
            a["part_id"],
            a["serial"],
            a["camera_id"],
            a["decision"],
        )
        assert r.delivered_at is None and r.sequence is None and r.received_at <= r.created_at
        assert r.deadline_at - r.received_at == dt.timedelta(milliseconds=settings.line_deadline_ms)
    # strict order: only each sink's oldest row was tried; nothing behind it went out
    for sink, sink_rows in by_sink.items():
        assert sink_rows[0].id == first[sink].id and str(nobody) in (sink_rows[0].last_error or "")
        assert all(r.attempts == 0 for r in sink_rows[1:])


def _row(**changes) -> LineOutbox:
    t = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.timezone.utc)
    values = dict(
        id=1, sink="mqtt", kind="frame", inspection_id="I1", line_id="L1", camera_id="cam1", part_id="P-1",
        serial=None, decision="pass", reason="pass", model_version="3", received_at=t,
        deadline_at=t + dt.timedelta(milliseconds=200),
    )  # fmt: skip
    values.update(changes)
    return LineOutbox(**values)


def test_the_deadline_rule_turns_a_late_verdict_into_a_flagged_reject_and_keeps_a_timely_one():
    row = _row()
    timely = late_verdict(row, 7, row.received_at + dt.timedelta(milliseconds=150))
    late = late_verdict(row, 8, row.received_at + dt.timedelta(milliseconds=201))
    assert (timely.decision, timely.late, timely.sequence, round(timely.latency_ms)) == ("pass", False, 7, 150)
    assert (late.decision, late.model_decision, late.late, round(late.latency_ms)) == ("reject", "pass", True, 201)


def _verdict(**changes) -> Verdict:
    row = _row()
    values = dict(late_verdict(row, 1, row.received_at).__dict__)
    values.update(changes)
    return Verdict(**values)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"decision": "maybe"}, "decision 'maybe' has no result code"),
        ({"model_decision": "ok"}, "decision 'ok' has no result code"),
        ({"late": True}, "a late verdict is delivered as reject"),
        ({"sequence": 0}, "sequence numbers start at 1"),
    ],
)
def test_malformed_verdict_values_are_refused_before_anything_is_written(changes, words):
    with pytest.raises(LineValueError, match=words):
        _verdict(**changes)


def test_the_modbus_block_checks_what_it_writes():
    values = encode_block(_verdict(sequence=65536, decision="reject", model_decision="review"), 4)
    assert values[:4] == [1, 3, 0, 3] and decode_part_id(values[4:]) == "P-1"  # the sequence wraps past 0
    assert [wrap16(n) for n in (1, 65535, 65536, 65537)] == [1, 65535, 1, 2]
    with pytest.raises(LineValueError, match="counters start at 1"):
        wrap16(0)
    # an id that does not fit is not cut (a cut echo names another part): empty echo, flagged
    cut = encode_block(_verdict(part_id="P-123456789"), 4)
    assert cut[2] == FLAG_PART_ID_CUT and cut[3] == 0 and cut[4:] == [0, 0, 0, 0]
    assert encode_part_id("Ä-1", 4) == ([0, 0, 0, 0], False)
    assert encode_part_id(None, 2) == ([0, 0], True)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"line_sinks": ["kafka"]}, "line_sinks.0: Input should be 'mqtt', 'modbus' or 'opcua'"),
        ({"line_sinks": ["mqtt", "mqtt"]}, "each sink may be named once"),
        ({"line_sinks": ["mqtt"], "workers": 2}, "line sinks need workers: 1"),
        ({"line_sinks": ["modbus"]}, "modbus_blocks is empty"),
        ({"mqtt_topic_prefix": "plant/#"}, "without '\\+', '#'"),
        ({"mqtt_topic_prefix": "/plant"}, "does not start or end with '/'"),
        ({"mqtt_qos": 0}, "mqtt_qos: Input should be 1 or 2"),
        ({"modbus_unit": 248}, "modbus_unit: Input should be less than or equal to 247"),
        ({"modbus_blocks": {"cam1": 0}}, "overlaps the heartbeat register \\(registers 0-0\\)"),
        (
            {"modbus_blocks": {"cam1": 10, "cam2": 15}},
            "'cam2' \\(registers 15-26\\) overlaps the block of 'cam1'",
        ),
        ({"modbus_blocks": {"cam1": 65530}}, "it must start between 0 and 65524"),
        ({"modbus_blocks": {"bad id": 10}}, "'bad id' is not a camera id"),
        ({"line_cameras": {"L1": []}}, "line 'L1' needs its cameras, each once"),
        ({"line_cameras": {"L1": ["top", "top"]}}, "line 'L1' needs its cameras, each once"),
        ({"modbus_part_blocks": {"L9": 40}}, "part blocks for lines \\['L9'\\] that line_cameras does not name"),
        (
            {"line_cameras": {"L1": ["top"]}, "modbus_blocks": {"top": 10}, "modbus_part_blocks": {"L1": 20}},
            "the block of line 'L1' \\(registers 20-31\\) overlaps the block of camera 'top'",
        ),
        ({"line_deadline_ms": 0}, "line_deadline_ms: Input should be greater than or equal to 1"),
        ({"line_retry_initial_s": 5, "line_retry_max_s": 1}, "at least line_retry_initial_s"),
    ],
)
def test_malformed_line_settings_are_refused_with_the_setting_and_what_is_allowed(changes, words):
    with pytest.raises(ConfigError, match=words):
        Settings.load(**changes)


def test_a_good_line_configuration_loads_from_the_environment(monkeypatch):
    monkeypatch.setenv("ANDON_LINE_SINKS", '["mqtt", "modbus"]')
    monkeypatch.setenv("ANDON_MODBUS_BLOCKS", '{"cam1": 10, "cam2": 22}')
    s = Settings.load(line_deadline_ms=150)
    assert s.line_sinks == ["mqtt", "modbus"] and s.modbus_blocks == {"cam1": 10, "cam2": 22}
    assert s.line_deadline_ms == 150 and s.mqtt_qos == 1


def test_migration_0004_adds_the_outbox_and_downgrades_cleanly(tmp_path):
    import sqlalchemy as sa

    from andon.service.db import downgrade, make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate(engine)
    assert "line_outbox" in sa.inspect(engine).get_table_names()
    downgrade(engine, "0003")
    assert "line_outbox" not in sa.inspect(engine).get_table_names()
    migrate(engine)
    indexes = {i["name"] for i in sa.inspect(engine).get_indexes("line_outbox")}
    engine.dispose()
    assert indexes == {"ix_line_outbox_pending"}
