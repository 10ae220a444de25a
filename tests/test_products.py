"""Recipes per product (SKU): each product's model and thresholds, the line's selected product, switches that
are atomic and recorded (andon.service.products, docs/line.md "Recipes per product")."""

from __future__ import annotations

import pytest

from andon.errors import InvalidVersionError, RegistryError, StorageError, UnknownProductError
from service_support import client_for, settings_for

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
def service(tmp_path):
    files = _models(tmp_path)
    with client_for(settings_for(tmp_path, files["1"], inference_threads=2, queue_size=64)) as client:
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
    import json

    from andon.service.registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "models")
    registry.root.mkdir(parents=True)
    registry.state_path.write_text(json.dumps({"active": "1", "previous": None, "shadow": None, "generation": 3}))
    state = registry.state()
    assert (state.active, state.products, state.lines) == ("1", {}, {})
    registry.state_path.write_text(json.dumps({"active": "1", "products": ["SKU-A"]}))
    with pytest.raises(RegistryError, match="'products' must map"):
        registry.state()
