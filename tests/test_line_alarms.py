"""Alarms (docs/line.md, "Alarms"): the dashboard's p-chart, score drift and frame quality figures, watched
by the alarm evaluator, raise an alarm and clear it again; it reaches the PLC (a real pymodbus server), the
broker (Debian's mosquitto), GET /v1/alarms and the dashboard page; bad alarm settings are refused."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from sqlalchemy import insert, select

from andon.errors import ConfigError
from andon.service.db import make_engine, migrate, session_factory
from andon.service.line.alarm_model import BITS, FRAME_QUALITY, P_CHART, SCORE_DRIFT, LineAlarm
from andon.service.line.alarms import AlarmEvaluator
from andon.service.settings import Settings
from andon.service.tables import REVIEW_NOT_REQUIRED, Inspection, new_id, utcnow
from line_support import FAST_MODBUS, Broker, Subscriber, wait_for
from review_support import add_user, login
from service_support import client_for, db_url, settings_for  # noqa: F401

NOW = dt.datetime(2026, 11, 25, 18, 0, tzinfo=dt.timezone.utc)
#: a 10-minute window of 1-minute subgroups, judged from 20 frames on
FAST_ALARMS = dict(alarm_window_s=600.0, alarm_subgroup_s=60.0, alarm_min_frames=20, alarm_interval_s=0.1)
RNG = np.random.default_rng(5)


def add_frames(
    sessions,
    n: int,
    at: dt.datetime,
    *,
    line: str = "L1",
    camera: str = "cam1",
    rejects: int = 0,
    scores: tuple[float, float] = (0.0, 0.3),
    brightness: float = 120.0,
    model_version: str = "1",
) -> None:
    """``n`` records just before ``at`` (over 10 seconds): ``rejects`` of them rejected."""
    rows = []
    for i in range(n):
        decision = "reject" if i < rejects else "pass"
        rows.append(
            dict(
                id=new_id(),
                created_at=at - dt.timedelta(seconds=0.01 + 10.0 * i / max(1, n)),
                line_id=line,
                camera_id=camera,
                label="defect" if decision == "reject" else "ok",
                decision=decision,
                defect_score=float(RNG.uniform(*scores)),
                scores={},
                reasons=[],
                model_version=model_version,
                model_hash="h" * 64,
                image_format="JPEG",
                image_width=64,
                image_height=48,
                image_bytes=1000,
                body_sha256="0" * 64,
                review_status=REVIEW_NOT_REQUIRED,
                timings_ms={},
                reason="defect" if decision == "reject" else "pass",
                brightness=float(brightness + RNG.normal(0, 1.0)),
                contrast=float(40.0 + RNG.normal(0, 0.5)),
                focus=float(300.0 + RNG.normal(0, 5.0)),
            )
        )
    with sessions() as s:
        s.execute(insert(Inspection), rows)
        s.commit()


def steady_history(sessions, now: dt.datetime, **kw) -> None:
    """Nine quiet one-minute subgroups before the newest one: 40 frames each, one reject in 40."""
    for k in range(1, 10):
        add_frames(sessions, 40, now - dt.timedelta(seconds=60 * k + 15), rejects=1, **kw)


@pytest.fixture
def db(tmp_path, db_url):  # noqa: F811 - SQLite and a real PostgreSQL server
    engine = make_engine(db_url or f"sqlite:///{tmp_path / 'andon.db'}")
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


def evaluator(db, **changes) -> AlarmEvaluator:
    return AlarmEvaluator(Settings.load(**{**FAST_ALARMS, **changes}), db)


def keys(ev) -> set[tuple[str, str, str | None]]:
    return {(a["kind"], a["signal"], a["camera_id"]) for a in ev.raised}


def test_a_reject_rate_above_its_p_chart_limit_raises_an_alarm_that_clears_when_the_rate_is_back(db):
    steady_history(db, NOW)
    ev = evaluator(db, alarms=["p_chart"])
    assert ev.evaluate(NOW).raised == []  # quiet: nothing out of control
    add_frames(db, 40, NOW - dt.timedelta(seconds=5), rejects=20)  # half of the newest subgroup rejected
    first = ev.evaluate(NOW)
    assert keys(first) == {(P_CHART, "reject_rate", None)}
    alarm = first.raised[0]
    assert alarm["value"] == pytest.approx(0.5) and alarm["value"] > alarm["high"] > alarm["detail"]["centre"]
    assert alarm["detail"]["frames"] == 40 and alarm["scope"] == "line"
    assert ev.evaluate(NOW).raised == []  # raised once, not at every evaluation
    add_frames(db, 400, NOW)  # the newest subgroup: 20 rejects in 440 frames, inside its limits again
    later = ev.evaluate(NOW)
    assert [(a["kind"], a["clear_reason"]) for a in later.cleared] == [(P_CHART, "inside")]
    with db() as s:
        rows = s.scalars(select(LineAlarm)).all()
    assert len(rows) == 1 and rows[0].raised_at == NOW and rows[0].cleared_at == NOW
    assert rows[0].clear_value == pytest.approx(20 / 440)


def test_p_chart_alarms_per_camera_name_the_camera(db):
    steady_history(db, NOW, camera="cam1")
    steady_history(db, NOW, camera="cam2")
    add_frames(db, 40, NOW - dt.timedelta(seconds=5), camera="cam1")
    add_frames(db, 40, NOW - dt.timedelta(seconds=5), camera="cam2", rejects=25)
    ev = evaluator(db, alarms=["p_chart"], alarm_p_chart_scope="camera", alarm_p_chart_rates=["reject"])
    assert keys(ev.evaluate(NOW)) == {(P_CHART, "reject_rate", "cam2")}


def test_a_newest_subgroup_with_too_few_frames_is_not_judged(db):
    steady_history(db, NOW)
    add_frames(db, 10, NOW - dt.timedelta(seconds=5), rejects=10)  # 10 < alarm_min_frames
    assert evaluator(db, alarms=["p_chart"]).evaluate(NOW).raised == []


def test_a_camera_whose_brightness_leaves_its_usual_band_raises_frame_quality_and_clears(db):
    steady_history(db, NOW)
    add_frames(db, 30, NOW - dt.timedelta(seconds=5), brightness=60.0, rejects=1)  # the lamp fails
    ev = evaluator(db, alarms=["frame_quality"])
    first = ev.evaluate(NOW)
    assert keys(first) == {(FRAME_QUALITY, "brightness", "cam1")}  # contrast and focus stay in their bands
    alarm = first.raised[0]
    assert alarm["value"] < alarm["low"] and alarm["scope"] == "camera"
    assert "brightness" in alarm["message"] and "cam1" in alarm["message"]
    add_frames(db, 100, NOW, brightness=120.0)  # the lamp is back: the newest median is usual again
    assert [a["signal"] for a in ev.evaluate(NOW).cleared] == ["brightness"]


def test_scores_that_drift_from_the_models_first_frames_raise_score_drift_and_clear(db):
    add_frames(db, 1000, NOW - dt.timedelta(hours=3))  # the model's first 1000 frames: the reference
    steady_history(db, NOW)
    ev = evaluator(db, alarms=["score_drift"])
    assert ev.evaluate(NOW).raised == []  # the window's scores look like the reference
    add_frames(db, 400, NOW - dt.timedelta(seconds=5), scores=(0.7, 1.0))
    first = ev.evaluate(NOW)
    assert keys(first) == {(SCORE_DRIFT, "psi", None)}
    assert first.raised[0]["value"] >= 0.25 and first.raised[0]["detail"]["model_version"] == "1"
    add_frames(db, 6000, NOW, scores=(0.0, 0.3))
    assert [a["kind"] for a in ev.evaluate(NOW).cleared] == [SCORE_DRIFT]


def test_alarms_clear_when_their_kind_is_turned_off_or_their_line_stops(db):
    steady_history(db, NOW)
    add_frames(db, 40, NOW - dt.timedelta(seconds=5), rejects=20)
    assert keys(evaluator(db, alarms=["p_chart"]).evaluate(NOW)) == {(P_CHART, "reject_rate", None)}
    off = evaluator(db, alarms=[]).evaluate(NOW)
    assert [a["clear_reason"] for a in off.cleared] == ["turned off"]
    assert keys(evaluator(db, alarms=["p_chart"]).evaluate(NOW)) == {(P_CHART, "reject_rate", None)}
    gone = evaluator(db, alarms=["p_chart"]).evaluate(NOW + dt.timedelta(hours=1))  # no frames in the window
    assert [a["clear_reason"] for a in gone.cleared] == ["no frames"]


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(alarms=["p_chart", "nope"]), "alarms.1.*'p_chart', 'score_drift' or 'frame_quality'"),
        (dict(alarms=["p_chart", "p_chart"]), "each alarm may be named once"),
        (dict(alarm_window_s=100, alarm_subgroup_s=60), "must hold 2 to 1000 subgroups"),
        (dict(alarm_window_s=86400, alarm_subgroup_s=10), "must hold 2 to 1000 subgroups"),
        (dict(alarms=["p_chart"], alarm_p_chart_rates=[]), "alarm_p_chart_rates is empty"),
        (dict(alarm_p_chart_rates=["scrap"]), "alarm_p_chart_rates.0.*'reject' or 'review'"),
        (dict(alarm_p_chart_sigmas=0.5), "alarm_p_chart_sigmas.*greater than or equal to 1"),
        (dict(alarm_drift_psi=0), "alarm_drift_psi.*greater than 0"),
        (dict(alarm_interval_s=0), "alarm_interval_s"),
        (dict(alarm_p_chart_scope="plant"), "alarm_p_chart_scope.*'line' or 'camera'"),
        (dict(alarms=["score_drift"], workers=2), "alarms need workers: 1"),
        (dict(modbus_blocks={"cam1": 10}, modbus_alarm_registers={"L1": 15}), "overlaps the block of camera 'cam1'"),
        (dict(modbus_alarm_registers={"L1": 0}), "overlaps the heartbeat register"),
        (dict(modbus_alarm_registers={"L1": 70000}), "registers are 0 to 65535"),
        (dict(modbus_alarm_registers={"L 1": 40}), "'L 1' is not a line id"),
        (dict(modbus_alarm_registers={"L1": 40, "L2": 40}), "overlaps the alarm register of line 'L1'"),
    ],
)
def test_bad_alarm_settings_are_refused_naming_the_setting_and_what_is_allowed(changes, words):
    with pytest.raises(ConfigError, match=words):
        Settings.load(**changes)


# ---- end to end: the PLC, the broker, the API and the dashboard -------------------------------------------


def test_an_alarm_reaches_the_plc_the_broker_the_api_and_the_dashboard_then_clears(tmp_path, tiny_model_path, plc):
    broker = Broker(tmp_path / "broker")
    sub = Subscriber(broker.port, "plant/andon/#")
    register = 40
    settings = settings_for(
        tmp_path,
        tiny_model_path,
        **{
            **FAST_MODBUS,
            **FAST_ALARMS,
            "line_sinks": ["modbus", "mqtt"],
            "modbus_port": plc.port,
            "modbus_blocks": {"cam1": 10},
            "modbus_alarm_registers": {"L1": register},
            "mqtt_port": broker.port,
            "mqtt_topic_prefix": "plant/andon",
            "alarms": ["p_chart", "score_drift", "frame_quality"],
            "alarm_p_chart_rates": ["reject"],
        },
    )
    try:
        with client_for(settings) as client:
            ctx = client.app.state.ctx
            wait_for(lambda: ctx.alarms.last is not None, what="the first evaluation")
            assert client.get("/v1/alarms").json()["active"] == []
            now = utcnow()
            add_frames(ctx.sessions, 1000, now - dt.timedelta(hours=3))  # the model's first frames: drift's reference
            steady_history(ctx.sessions, now)
            # the newest minute: 30 of 150 rejected, the lamp failing, the scores shifted up
            add_frames(ctx.sessions, 150, now - dt.timedelta(seconds=5), rejects=30, brightness=60.0, scores=(0.7, 1))

            every = BITS[P_CHART] | BITS[SCORE_DRIFT] | BITS[FRAME_QUALITY]
            wait_for(lambda: plc.read(register) == [every], what="the alarm bits")
            active = client.get("/v1/alarms").json()["active"]
            assert {(a["kind"], a["signal"]) for a in active} == {
                (P_CHART, "reject_rate"),
                (SCORE_DRIFT, "psi"),
                (FRAME_QUALITY, "brightness"),
            }

            state_topic = "plant/andon/L1/alarm"
            wait_for(lambda: any(len(json.loads(p)["active"]) == 3 for p in sub.on(state_topic)), what="MQTT state")
            events = [json.loads(p) for p in sub.on(state_topic + "/event")]
            assert sorted((e["event"], e["alarm"]["kind"]) for e in events) == [
                ("raised", FRAME_QUALITY),
                ("raised", P_CHART),
                ("raised", SCORE_DRIFT),
            ]
            add_user(ctx, "eng", role="engineer")
            login(client, "eng")
            page = client.get("/dashboard").text
            assert all(f'data-kind="{kind}"' in page for kind in (P_CHART, SCORE_DRIFT, FRAME_QUALITY))
            assert "reject rate 20.0% on the line" in page and "brightness" in page

            add_frames(ctx.sessions, 2000, utcnow(), brightness=120.0)  # back to normal: all three clear
            wait_for(lambda: plc.read(register) == [0], what="the alarm bits to clear")
            wait_for(lambda: client.get("/v1/alarms").json()["active"] == [], what="the API to show no alarm")
            wait_for(lambda: json.loads(sub.on(state_topic)[-1])["active"] == [], what="MQTT state to clear")
            events = [json.loads(p) for p in sub.on(state_topic + "/event")]
            assert sorted(e["event"] for e in events) == ["cleared"] * 3 + ["raised"] * 3
            recent = client.get("/v1/alarms", params={"recent": 5}).json()["recent"]
            assert {a["clear_reason"] for a in recent} == {"inside"}
            assert "No active alarm" in client.get("/dashboard").text
    finally:
        sub.close()
        broker.stop()


def test_after_a_restart_the_plc_gets_the_active_alarms_again(tmp_path, tiny_model_path, plc):
    register = 40
    settings = settings_for(
        tmp_path,
        tiny_model_path,
        **{
            **FAST_MODBUS,
            **FAST_ALARMS,
            "modbus_port": plc.port,
            "modbus_blocks": {"cam1": 10},
            "modbus_alarm_registers": {"L1": register},
            "alarms": ["p_chart"],
            "alarm_interval_s": 3600.0,  # one evaluation, at start
        },
    )
    with client_for(settings) as client:
        now = utcnow()
        steady_history(client.app.state.ctx.sessions, now)
        add_frames(client.app.state.ctx.sessions, 40, now - dt.timedelta(seconds=5), rejects=20)
        client.app.state.ctx.alarms.evaluate()
        wait_for(lambda: plc.read(register) == [BITS[P_CHART]], what="the alarm bit")
    plc.stop()
    plc.registers[register] = 0  # the PLC restarted: its registers are zero
    plc.start()
    with client_for(settings):
        wait_for(lambda: plc.read(register) == [BITS[P_CHART]], what="the alarm bit after the restart")


def test_migration_0006_adds_the_alarms_table_and_downgrades_cleanly(tmp_path):
    import sqlalchemy as sa

    from andon.service.db import downgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate(engine)
    assert "line_alarms" in sa.inspect(engine).get_table_names()
    downgrade(engine, "0005")
    assert "line_alarms" not in sa.inspect(engine).get_table_names()
    migrate(engine)
    indexes = {i["name"] for i in sa.inspect(engine).get_indexes("line_alarms")}
    engine.dispose()
    assert indexes == {"ix_line_alarms_active"}
