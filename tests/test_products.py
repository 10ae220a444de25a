"""Recipes per product (SKU): each product's model and thresholds, the line's selected product, switches that
are atomic and recorded (andon.service.products, docs/line.md "Recipes per product")."""

from __future__ import annotations

import pytest

from andon.errors import InvalidVersionError, RegistryError, StorageError, UnknownProductError
from service_support import client_for, db_url, settings_for  # noqa: F401 - db_url: SQLite and PostgreSQL

#: the default model (tiny, version 1): pass below 0.3, reject from 0.7; product A's (version a-1) is stricter
#: (pass below 0.05, reject from 0.4); product B's (version b-1) has other classes (ok/scratch/dent)


def _models(root):
    from andon.inspect.card import ThresholdBand, Thresholds
    from tiny_onnx import tiny_card, write_tiny_model

    strict = Thresholds(defect=ThresholdBand(pass_below=0.05, reject_at=0.4), source="manual").model_dump()
    return {
        "1": write_tiny_model(root / "m1.onnx"),
        "a-1": write_tiny_model(root / "a1.onnx", tiny_card(version="a-1", thresholds=strict)),
        "a-2": write_tiny_model(root / "a2.onnx", tiny_card(version="a-2")),
        "b-1": write_tiny_model(root / "b1.onnx", tiny_card(("ok", "scratch", "dent"), version="b-1")),
    }


@pytest.fixture
def service(tmp_path, db_url):  # noqa: F811
    files = _models(tmp_path)
    with client_for(settings_for(tmp_path, files["1"], db_url, inference_threads=2, queue_size=64)) as client:
        ctx = client.app.state.ctx
        for version in ("a-1", "a-2", "b-1"):
            ctx.registry.add_file(files[version])
        yield client


def test_each_product_has_its_own_active_and_previous_version_and_the_default_stays(service):
    ctx = service.app.state.ctx
    ctx.runtime.promote("a-1", product="SKU-A")
    ctx.runtime.promote("b-1", product="SKU-B")
    state = ctx.registry.state()
    assert (state.active, state.previous) == ("1", None)  # the unnamed default is untouched
    assert state.products == {
        "SKU-A": {"active": "a-1", "previous": None},
        "SKU-B": {"active": "b-1", "previous": None},
    }
    ctx.runtime.promote("a-2", product="SKU-A")
    assert ctx.registry.state().products["SKU-A"] == {"active": "a-2", "previous": "a-1"}
    models = ctx.runtime.snapshot()
    assert {k: m.model_version for k, m in models.products.items()} == {"SKU-A": "a-2", "SKU-B": "b-1"}
    assert models.active.model_version == "1"
    ctx.runtime.rollback(product="SKU-A")
    assert ctx.registry.state().products["SKU-A"] == {"active": "a-1", "previous": "a-2"}
    assert ctx.runtime.snapshot().products["SKU-A"].model_version == "a-1"
    with pytest.raises(RegistryError, match="nothing to roll back to for product SKU-B"):
        ctx.runtime.rollback(product="SKU-B")
    with pytest.raises(UnknownProductError, match="known products: SKU-A, SKU-B"):
        ctx.runtime.rollback(product="SKU-C")
    with pytest.raises(InvalidVersionError, match="not a valid product id"):
        ctx.registry.promote("a-1", product="../etc")


def test_a_line_selection_is_in_force_at_once_and_recorded(service):
    ctx = service.app.state.ctx
    ctx.runtime.promote("a-1", product="SKU-A")
    switch = ctx.products.select("L1", "SKU-A", source="opcua", actor="plc-7")
    assert switch.changed and (switch.from_product, switch.to_product) == (None, "SKU-A")
    assert ctx.products.current("L1") == "SKU-A" and ctx.products.current("L2") is None
    assert ctx.runtime.snapshot().judge("L1")[1].model_version == "a-1"
    assert ctx.runtime.snapshot().judge("L2")[1].model_version == "1"
    again = ctx.products.select("L1", "SKU-A", source="opcua")
    assert not again.changed  # nothing to switch: nothing recorded
    ctx.products.select("L1", None, source="api", actor="key-1")
    rows = ctx.products.switches(line_id="L1")
    assert [(r.from_product, r.to_product, r.source, r.actor) for r in rows] == [
        ("SKU-A", None, "api", "key-1"),
        (None, "SKU-A", "opcua", "plc-7"),
    ]
    assert rows[0].at >= rows[1].at and rows[0].generation > rows[1].generation
    with pytest.raises(UnknownProductError, match=r"unknown product 'SKU-X'; known products: SKU-A"):
        ctx.products.select("L1", "SKU-X")
    with pytest.raises(InvalidVersionError, match="line id"):
        ctx.products.select("bad line!", "SKU-A")
    assert ctx.registry.state().lines == {} and len(ctx.products.switches()) == 2


def test_a_switch_the_database_cannot_record_is_undone(service, monkeypatch):
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    ctx = service.app.state.ctx
    ctx.runtime.promote("a-1", product="SKU-A")

    def broken_commit(self):
        raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(Session, "commit", broken_commit)
    with pytest.raises(StorageError, match="it was undone"):
        ctx.products.select("L1", "SKU-A")
    monkeypatch.undo()
    assert ctx.registry.state().lines == {} and ctx.products.current("L1") is None
    assert ctx.products.switches() == []


def test_registry_state_from_before_products_still_reads(tmp_path):
    """A file-based registry's state.json from before products is imported as it read then (no products)."""
    import json

    from andon.service.domain import open_service
    from andon.service.settings import Settings

    for name, raw in (
        ("old", {"active": "1", "previous": None, "shadow": None, "generation": 3}),
        ("bad", {"active": "1", "products": ["SKU-A"]}),
    ):
        settings = Settings.load(None, data_dir=tmp_path / name)
        settings.registry_dir.mkdir(parents=True)
        (settings.registry_dir / "state.json").write_text(json.dumps(raw))
        with open_service(settings) as service:
            if name == "old":
                state = service.registry.state()
                assert (state.active, state.products, state.lines, state.generation) == ("1", {}, {}, 3)
            else:
                with pytest.raises(RegistryError, match="'products' must map"):
                    service.registry.state()


# ---- the API ---------------------------------------------------------------------------------------------


def _engineer(client) -> tuple[str, dict[str, str]]:
    """An engineer key (the service leaves open mode: every call below carries it)."""
    from service_support import add_key, auth

    secret = add_key(client, "engineer")
    return secret, auth(secret)


def test_promote_per_product_through_the_api_and_frames_judged_by_their_product(service):
    from service_support import REVIEW, jpeg, post_frame

    secret, key = _engineer(service)
    r = service.post("/v1/models/a-1/promote", params={"product": "SKU-A"}, headers=key)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["active"] == "1" and body["products"] == {"SKU-A": {"active": "a-1", "previous": None}}
    assert service.post("/v1/models/b-1/promote", params={"product": "SKU-B"}, headers=key).status_code == 200
    # one frame that the default reviews (P(defect) ~0.47); SKU-A's stricter card rejects it; SKU-B has 3 classes
    default = post_frame(service, jpeg(REVIEW, noise=1), key=secret).json()
    a = post_frame(service, jpeg(REVIEW, noise=2), key=secret, product="SKU-A").json()
    b = post_frame(service, jpeg(REVIEW, noise=3), key=secret, product="SKU-B").json()
    assert (default["product"], default["model_version"], default["decision"]) == (None, "1", "review")
    assert (a["product"], a["model_version"], a["decision"]) == ("SKU-A", "a-1", "reject")
    assert (b["product"], b["model_version"]) == ("SKU-B", "b-1") and set(b["scores"]) == {"ok", "scratch", "dent"}
    assert set(default["scores"]) == {"ok", "defect"}
    stored = service.get(f"/v1/inspections/{a['id']}", headers=key).json()
    assert (stored["product"], stored["decision"]) == ("SKU-A", "reject")
    listed = service.get("/v1/inspections", params={"product": "SKU-A"}, headers=key).json()["items"]
    assert [i["id"] for i in listed] == [a["id"]]
    # a batch may mix products: each frame through its own product's model, in order
    files = [("frame", (f"{i}.jpg", jpeg(REVIEW, noise=10 + i), "image/jpeg")) for i in range(3)]
    meta = '[{"product": "SKU-A"}, {}, {"product": "SKU-B"}]'
    batch = service.post(
        "/v1/inspections/batch", files=files, data={"camera_id": "cam1", "line_id": "L1", "meta": meta}, headers=key
    )
    assert batch.status_code == 201, batch.text
    assert [(i["product"], i["model_version"]) for i in batch.json()["items"]] == [
        ("SKU-A", "a-1"),
        (None, "1"),
        ("SKU-B", "b-1"),
    ]
    rolled = service.post("/v1/models/rollback", params={"product": "SKU-A"}, headers=key)
    assert rolled.status_code == 409 and "nothing to roll back to for product SKU-A" in rolled.json()["message"]


def test_unknown_or_malformed_products_are_refused_with_the_known_ones_named(service):
    from service_support import REVIEW, count_rows, jpeg, post_frame

    secret, key = _engineer(service)
    service.post("/v1/models/a-1/promote", params={"product": "SKU-A"}, headers=key)
    r = post_frame(service, jpeg(REVIEW), key=secret, product="SKU-Z")
    assert r.status_code == 422 and r.json()["error"] == "unknown_product", r.text
    assert "'SKU-Z'" in r.json()["message"] and "known products: SKU-A" in r.json()["message"]
    bad = post_frame(service, jpeg(REVIEW), key=secret, product="no spaces")
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request" and "product" in bad.json()["message"]
    r = service.put("/v1/lines/L1/product", json={"product": "SKU-Z"}, headers=key)
    assert r.status_code == 422 and "known products: SKU-A" in r.json()["message"]
    r = service.post("/v1/models/a-1/promote", params={"product": "x" * 70}, headers=key)
    assert r.status_code == 422 and "not a valid product id" in r.json()["message"]
    r = service.post("/v1/models/nope/promote", params={"product": "SKU-A"}, headers=key)
    assert r.status_code == 404
    assert service.put("/v1/lines/L1/product", json={"sku": "SKU-A"}, headers=key).status_code == 422
    assert count_rows(service) == 0 and service.get("/v1/products/switches", headers=key).json()["items"] == []
    assert service.app.state.ctx.registry.state().products == {"SKU-A": {"active": "a-1", "previous": None}}


def test_a_line_runs_its_selected_product_until_it_is_switched_back(service):
    from service_support import REVIEW, jpeg, post_frame

    secret, key = _engineer(service)
    service.post("/v1/models/a-1/promote", params={"product": "SKU-A"}, headers=key)
    r = service.put("/v1/lines/L1/product", json={"product": "SKU-A"}, headers=key)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["product"], body["model_version"], body["changed"]) == ("SKU-A", "a-1", True)
    assert body["switch"]["from_product"] is None and body["switch"]["actor"].startswith("key ")
    on_l1 = post_frame(service, jpeg(REVIEW, noise=1), key=secret, line="L1").json()
    on_l2 = post_frame(service, jpeg(REVIEW, noise=2), key=secret, line="L2").json()
    named = post_frame(service, jpeg(REVIEW, noise=3), key=secret, line="L1", product="SKU-A").json()
    assert (on_l1["product"], on_l1["decision"]) == ("SKU-A", "reject")
    assert (on_l2["product"], on_l2["decision"]) == (None, "review")
    assert named["product"] == "SKU-A"
    assert service.get("/v1/lines/L1/product", headers=key).json()["product"] == "SKU-A"
    listing = service.get("/v1/products", headers=key).json()
    assert listing["lines"] == {"L1": "SKU-A"} and listing["products"][0]["lines"] == ["L1"]
    assert listing["products"][0]["loaded"]["version"] == "a-1" and listing["default"] == "1"
    assert service.put("/v1/lines/L1/product", json={"product": "SKU-A"}, headers=key).json()["changed"] is False
    back = service.put("/v1/lines/L1/product", json={"product": None}, headers=key).json()
    assert (back["product"], back["model_version"], back["changed"]) == (None, "1", True)
    assert post_frame(service, jpeg(REVIEW, noise=4), key=secret, line="L1").json()["product"] is None
    switches = service.get("/v1/products/switches", params={"line_id": "L1"}, headers=key).json()["items"]
    assert [(s["from_product"], s["to_product"], s["source"]) for s in switches] == [
        ("SKU-A", None, "api"),
        (None, "SKU-A", "api"),
    ]
    assert service.put("/v1/lines/bad line/product", json={"product": None}, headers=key).status_code == 422


def test_sku_switch_under_load(tmp_path):
    """Four threads post frames to a real server (uvicorn) while a fifth flips line L1 between SKU-A and the
    default through the API: every answer is wholly one product's (its model version and its thresholds'
    decision), that product was in force on the line at some moment while the request was in flight, no
    request fails, and every switch is recorded."""
    import datetime as dt
    import threading
    import time

    import httpx

    from andon.service.auth import create_key
    from andon.service.domain import open_service
    from service_support import REVIEW, jpeg, live_server

    files = _models(tmp_path)
    settings = settings_for(tmp_path, files["1"], inference_threads=2, queue_size=64)
    with open_service(settings) as data, data.sessions() as session:
        _, secret = create_key(session, role="engineer")
        session.commit()
        data.registry.add_file(files["a-1"])
    key = {"Authorization": f"Bearer {secret}"}
    expected = {None: ("1", "review"), "SKU-A": ("a-1", "reject")}
    answers: list[tuple[float, float, dict]] = []
    errors: list[str] = []
    flips: list[dict] = []
    stop = threading.Event()
    frames = [jpeg(REVIEW, noise=i) for i in range(1, 40)]

    def poster(url: str, n: int) -> None:
        with httpx.Client(base_url=url, timeout=30, headers=key) as c:
            i = 0
            while not stop.is_set():
                sent = time.time()
                r = c.post(
                    "/v1/inspections",
                    content=frames[(n * 7 + i) % len(frames)],
                    params={"camera_id": f"cam{n}", "line_id": "L1"},
                    headers={"Content-Type": "image/jpeg"},
                )
                got = time.time()
                if r.status_code == 201:
                    answers.append((sent, got, r.json()))
                else:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                i += 1

    with live_server(settings) as url, httpx.Client(base_url=url, timeout=30, headers=key) as c:
        assert c.post("/v1/models/a-1/promote", params={"product": "SKU-A"}).status_code == 200
        threads = [threading.Thread(target=poster, args=(url, n)) for n in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        for i in range(24):
            product = "SKU-A" if i % 2 == 0 else None
            r = c.put("/v1/lines/L1/product", json={"product": product})
            assert r.status_code == 200, r.text
            flips.append(r.json())
            time.sleep(0.04)
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(30)
        recorded = c.get("/v1/products/switches", params={"line_id": "L1", "limit": 1000}).json()["items"][::-1]
        stored = c.get("/v1/inspections", params={"product": "SKU-A", "limit": 500}).json()["items"]
    assert not errors, errors[:5]
    assert len(answers) >= 60, len(answers)
    assert all(f["changed"] for f in flips) and len(recorded) == len(flips) == 24
    assert [r["id"] for r in recorded] == [f["switch"]["id"] for f in flips]
    assert [r["to_product"] for r in recorded] == [f["product"] for f in flips]
    assert [r["from_product"] for r in recorded] == [None] + [r["to_product"] for r in recorded[:-1]]
    switched = [(dt.datetime.fromisoformat(r["at"]), r["to_product"]) for r in recorded]
    seen = {None: 0, "SKU-A": 0}
    for sent, got, a in answers:
        version, decision = expected[a["product"]]
        assert (a["model_version"], a["decision"], set(a["scores"])) == (version, decision, {"ok", "defect"}), a
        seen[a["product"]] += 1
        # in force at some moment of [sent, got]: the product before the request, or one switched to during it
        start = dt.datetime.fromtimestamp(sent, dt.timezone.utc)
        end = dt.datetime.fromtimestamp(got, dt.timezone.utc)
        before = [p for at, p in switched if at <= start]
        in_force = {before[-1] if before else None} | {p for at, p in switched if start < at <= end}
        assert a["product"] in in_force, (a["product"], in_force, start, end)
    assert seen[None] > 5 and seen["SKU-A"] > 5, seen
    assert len(stored) == seen["SKU-A"]  # every record names the product it was judged under


# ---- the line, the CLI, the migration ----------------------------------------------------------------------


def test_the_mqtt_payload_names_the_product(tmp_path):
    from line_support import Broker, Subscriber, wait_for
    from service_support import REVIEW, jpeg, post_frame

    broker = Broker(tmp_path / "mosquitto")
    subscriber = Subscriber(broker.port, "plant/#")
    files = _models(tmp_path)
    settings = settings_for(
        tmp_path,
        files["1"],
        line_sinks=["mqtt"],
        mqtt_port=broker.port,
        mqtt_topic_prefix="plant",
        mqtt_timeout_s=1.0,
        line_deadline_ms=60_000,
        line_retry_initial_s=0.02,
        line_retry_max_s=0.2,
    )
    try:
        with client_for(settings) as client:
            ctx = client.app.state.ctx
            ctx.registry.add_file(files["a-1"])
            ctx.runtime.promote("a-1", product="SKU-A")
            ctx.products.select("L1", "SKU-A", source="opcua")
            for i, extra in enumerate(({}, {"line": "L2"}, {"product": "SKU-A", "line": "L2"})):
                r = post_frame(client, jpeg(REVIEW, noise=i), part=f"P-{i}", **extra)
                assert r.status_code == 201, r.text
            got = wait_for(lambda: len(subscriber.verdicts()) >= 3 and subscriber.verdicts(), what="3 verdicts")
    finally:
        subscriber.close()
        broker.stop()
    assert [(v["part_id"], v["product"], v["model_version"], v["decision"]) for v in got] == [
        ("P-0", "SKU-A", "a-1", "reject"),
        ("P-1", None, "1", "review"),
        ("P-2", "SKU-A", "a-1", "reject"),
    ]


def test_cli_promotes_per_product_lists_products_and_refuses_bad_input_in_one_line(tmp_path):
    import subprocess
    import sys

    from typer.testing import CliRunner

    from andon.cli import app

    files = _models(tmp_path)
    data = ["--data-dir", str(tmp_path / "d")]
    runner = CliRunner()
    for version in ("1", "a-1", "a-2"):
        assert runner.invoke(app, ["models", "add", str(files[version]), *data]).exit_code == 0
    r = runner.invoke(app, ["models", "promote", "a-1", "--product", "SKU-A", *data])
    assert r.exit_code == 0 and "product SKU-A: active: a-1 | previous: none" in r.output, r.output
    r = runner.invoke(app, ["models", "promote", "a-2", "--product", "SKU-A", *data])
    assert "product SKU-A: active: a-2 | previous: a-1" in r.output
    listed = runner.invoke(app, ["models", "list", *data], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and "active of SKU-A" in listed.output and "previous of SKU-A" in listed.output
    assert "SKU-A" in listed.output.split("product")[-1]
    r = runner.invoke(app, ["models", "rollback", "--product", "SKU-A", *data])
    assert "product SKU-A: active: a-1 | previous: a-2" in r.output
    for args, says in (
        (["promote", "a-1", "--product", "bad sku!"], "not a valid product id"),
        (["rollback", "--product", "SKU-Q"], "unknown product 'SKU-Q'; known products: SKU-A"),
        (["promote", "zz", "--product", "SKU-A"], "model version 'zz' is not in the registry"),
    ):
        p = subprocess.run(
            [sys.executable, "-m", "andon", "models", *args, *data], capture_output=True, text=True, timeout=60
        )
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        assert p.returncode != 0 and "Traceback" not in p.stderr + p.stdout, p.stderr
        assert len(lines) == 1 and says in lines[0], p.stderr
    from andon.service.domain import open_service
    from andon.service.settings import Settings

    with open_service(Settings.load(None, data_dir=tmp_path / "d")) as service:
        state = service.registry.state()
    assert (state.active, state.products) == (None, {"SKU-A": {"active": "a-1", "previous": "a-2"}})


def test_migration_0005_adds_the_product_columns_and_switches_and_downgrades_cleanly(tmp_path):
    import sqlalchemy as sa

    from andon.service.db import downgrade, make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate(engine)

    def columns(table):
        return {c["name"] for c in sa.inspect(engine).get_columns(table)}

    assert "product" in columns("inspections") and "product" in columns("line_outbox")
    assert "product_switches" in sa.inspect(engine).get_table_names()
    downgrade(engine, "0004")
    assert "product" not in columns("inspections") and "product" not in columns("line_outbox")
    assert "product_switches" not in sa.inspect(engine).get_table_names()
    migrate(engine)
    indexes = {i["name"] for i in sa.inspect(engine).get_indexes("product_switches")}
    engine.dispose()
    assert indexes == {"ix_product_switches_line_at"}


def test_a_plant_with_products_only_is_ready_and_frames_without_one_get_no_model(tmp_path):
    from service_support import REVIEW, jpeg, post_frame

    files = _models(tmp_path)
    with client_for(settings_for(tmp_path, None)) as client:
        ctx = client.app.state.ctx
        assert not ctx.runtime.ready
        ctx.registry.add_file(files["a-1"])
        ctx.runtime.promote("a-1", product="SKU-A")
        assert ctx.runtime.ready  # the line's heartbeat goes on: a product's model judges frames
        ctx.products.select("L1", "SKU-A")
        on_l1 = post_frame(client, jpeg(REVIEW), line="L1")
        on_l2 = post_frame(client, jpeg(REVIEW), line="L2")
    assert on_l1.status_code == 201 and on_l1.json()["product"] == "SKU-A"
    assert on_l2.status_code == 503 and on_l2.json()["error"] == "no_model"
