"""Inspector.load refuses every malformed model file with its own, specific error."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from andon.errors import ModelCardError, ModelFileError
from andon.inspect import Inspector
from andon.inspect.card import CARD_METADATA_KEY, ModelCard
from andon.inspect.onnxfile import embed_card
from tiny_onnx import tiny_card, tiny_model, write_tiny_model


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _set_card_text(model: onnx.ModelProto, text: str) -> onnx.ModelProto:
    for prop in model.metadata_props:
        if prop.key == CARD_METADATA_KEY:
            prop.value = text
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def test_valid_model_loads(tiny_model_path: Path) -> None:
    inspector = Inspector.load(tiny_model_path)
    assert inspector.card.classes == ["ok", "defect"]
    assert inspector.model_version == "1"
    assert inspector.model_hash == inspector.card.content_hash and len(inspector.model_hash) == 64


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"does not exist"):
        Inspector.load(tmp_path / "nope.onnx")


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"is not a file.*andon export"):
        Inspector.load(tmp_path)


def test_jpeg_is_not_onnx(tmp_path: Path) -> None:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    path = _write(tmp_path / "model.onnx", buf.tobytes())
    with pytest.raises(ModelFileError, match=r"is a JPEG image, not an ONNX model"):
        Inspector.load(path)


def test_text_is_not_onnx(tmp_path: Path) -> None:
    path = _write(tmp_path / "model.onnx", b"this is not a model, just some notes\n")
    with pytest.raises(ModelFileError, match=r"is a text file .*not an ONNX model"):
        Inspector.load(path)


def test_random_bytes_are_not_onnx(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path = _write(tmp_path / "model.onnx", b"\x00\xff" + data)
    with pytest.raises(ModelFileError, match=r"not an ONNX model"):
        Inspector.load(path)


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"empty \(0 bytes\)"):
        Inspector.load(_write(tmp_path / "model.onnx", b""))


def test_pickle_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "best.pt", pickle.dumps({"state_dict": {"w": [1, 2]}}, protocol=4))
    with pytest.raises(ModelFileError, match=r"a pickle \(protocol 4\).*andon export RUN"):
        Inspector.load(path)


def test_torch_zip_checkpoint_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # the layout torch.save writes
        zf.writestr("best/data.pkl", pickle.dumps({"w": 1}, protocol=2))
        zf.writestr("best/version", "3\n")
    path = _write(tmp_path / "best.pt", buf.getvalue())
    with pytest.raises(ModelFileError, match=r"this is a PyTorch checkpoint|is a PyTorch checkpoint.*andon export RUN"):
        Inspector.load(path)


def test_other_zip_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ModelFileError, match=r"a zip archive \(1 entries\)"):
        Inspector.load(_write(tmp_path / "model.onnx", buf.getvalue()))


def test_external_data_is_refused(tmp_path: Path) -> None:
    model = tiny_model()
    path = tmp_path / "model.onnx"
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    assert (tmp_path / "model.onnx.data").exists()
    with pytest.raises(ModelFileError, match=r"external data \(in 'model.onnx.data'\).*self-contained"):
        Inspector.load(path)


def test_missing_card(tmp_path: Path) -> None:
    model = tiny_model()
    del model.metadata_props[:]
    with pytest.raises(ModelCardError, match=r"has no andon model card"):
        Inspector.load(_save(model, tmp_path / "model.onnx"))


def test_card_not_json(tmp_path: Path) -> None:
    model = _set_card_text(tiny_model(), "{not json")
    with pytest.raises(ModelCardError, match=r"model.onnx: invalid model card"):
        Inspector.load(_save(model, tmp_path / "model.onnx"))


def test_card_with_invalid_field(tmp_path: Path) -> None:
    card = tiny_card().model_dump(mode="json")
    card["classes"] = ["ok"]
    model = _set_card_text(tiny_model(), __import__("json").dumps(card))
    with pytest.raises(ModelCardError, match=r"invalid model card: classes: .*at least 2 classes"):
        Inspector.load(_save(model, tmp_path / "model.onnx"))


@pytest.mark.parametrize(
    ("trained_as", "pattern"),
    [
        ({"scratch": ["a", "b"]}, r"trained_as names \['scratch'\], which are not among the classes"),
        ({"defect": ["crack"]}, r"at least 2 source classes .* \['defect'\] have fewer"),
        ({"defect": ["crack", "ok"]}, r"the training classes \['ok', 'crack', 'ok'\] must be unique"),
    ],
)
def test_card_with_inconsistent_trained_as(tmp_path: Path, trained_as: dict, pattern: str) -> None:
    card = tiny_card().model_dump(mode="json")
    card["trained_as"] = trained_as
    model = _set_card_text(tiny_model(), __import__("json").dumps(card))
    with pytest.raises(ModelCardError, match=r"invalid model card: .*" + pattern):
        Inspector.load(_save(model, tmp_path / "model.onnx"))


def test_cards_without_trained_as_still_load() -> None:
    """Cards written before ``trained_as`` existed: one head unit per class."""
    data = tiny_card().model_dump(mode="json")
    del data["trained_as"]
    card = ModelCard.from_json(__import__("json").dumps(data))
    assert card.trained_as == {} and card.training_classes == ["ok", "defect"] and card.head_groups == [0, 1]
    assert "trained_as" not in card.to_json()  # so that andon versions before it read cards without a merge
    merged = card.replace(trained_as={"defect": ["crack", "pit"]})
    assert merged.training_classes == ["ok", "crack", "pit"] and merged.head_groups == [0, 1, 1]
    assert ModelCard.from_json(merged.to_json()) == merged


def test_card_without_content_hash(tmp_path: Path) -> None:
    model = _set_card_text(tiny_model(), tiny_card().to_json())  # content_hash ""
    with pytest.raises(ModelCardError, match=r"no content_hash"):
        Inspector.load(_save(model, tmp_path / "model.onnx"))


def test_graph_changed_after_export(tmp_path: Path) -> None:
    model = tiny_model()
    weight = next(t for t in model.graph.initializer if t.name == "W")
    weight.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weight), "W"))
    with pytest.raises(ModelFileError, match=r"changed after export: its content hash"):
        Inspector.load(_save(model, tmp_path / "model.onnx"))


def test_card_edit_keeps_hash_valid(tmp_path: Path) -> None:
    """Editing the card (thresholds) does not change the content hash: the file still loads."""
    model = tiny_model()
    old = next(p.value for p in model.metadata_props if p.key == CARD_METADATA_KEY)
    card = tiny_card().model_validate_json(old)
    new = card.replace(thresholds={"defect": {"pass_below": 0.1, "reject_at": 0.9}, "source": "manual"})
    _set_card_text(model, new.to_json())
    inspector = Inspector.load(_save(model, tmp_path / "model.onnx"))
    assert inspector.thresholds.defect.reject_at == 0.9


def _with_card(card, **changes) -> onnx.ModelProto:
    """The graph built for ``card``, carrying a card with ``changes`` (content hash kept valid)."""
    model = tiny_model(card)
    stored = next(p.value for p in model.metadata_props if p.key == CARD_METADATA_KEY)
    return _set_card_text(model, card.model_validate_json(stored).replace(**changes).to_json())


def test_wrong_input_name(tmp_path: Path) -> None:
    model = _with_card(tiny_card(), input_name="pixels")
    with pytest.raises(
        ModelFileError, match=r"wrong input signature: inputs \['image'\], expected one float32 input 'pixels'"
    ):
        Inspector.load(_save(model, tmp_path / "model.onnx"))


def test_wrong_input_size(tmp_path: Path) -> None:
    spec = tiny_card().preprocess.model_dump()
    spec["input_size"] = (64, 64)
    model = _with_card(tiny_card(), preprocess=spec)
    with pytest.raises(ModelFileError, match=r"has shape \(batch, 3, 32, 32\) but the card says \(N, 3, 64, 64\)"):
        Inspector.load(_save(model, tmp_path / "model.onnx"))


def test_wrong_input_rank(tmp_path: Path) -> None:
    model = tiny_model()
    graph_in = model.graph.input[0]
    graph_in.type.tensor_type.shape.dim.pop()  # rank 3
    embed_card(model, tiny_card())
    with pytest.raises(ModelFileError, match=r"wrong input signature: 'image' is float \(batch, 3, 32\)"):
        Inspector.load(_save(model, tmp_path / "model.onnx"))


def test_wrong_number_of_classes(tmp_path: Path) -> None:
    model = _with_card(tiny_card(), classes=["ok", "scratch", "dent"], defect_classes=["scratch", "dent"])
    with pytest.raises(ModelFileError, match=r"'probs' is float \(batch, 2\), expected \(N, 3\)"):
        Inspector.load(_save(model, tmp_path / "model.onnx"))


def test_missing_probs_output(tmp_path: Path) -> None:
    model = _with_card(tiny_card(), output_names={"probabilities": "scores", "heatmap": "heatmap"})
    with pytest.raises(ModelFileError, match=r"no probabilities output 'scores'"):
        Inspector.load(_save(model, tmp_path / "model.onnx"))


def test_output_that_is_not_probabilities(tmp_path: Path) -> None:
    """A graph ending in logits instead of a softmax is caught by the warm-up, not on the line."""
    model = tiny_model()
    for node in model.graph.node:
        if node.op_type == "Softmax":
            node.CopyFrom(helper.make_node("Identity", ["pooled"], ["probs"]))
    embed_card(model, tiny_card())
    with pytest.raises(ModelFileError, match=r"not a probability vector.*must end with a softmax"):
        Inspector.load(_save(model, tmp_path / "model.onnx"))


def test_write_tiny_model_round_trip(tmp_path: Path) -> None:
    """The card read back by the inspector is the card written at export."""
    card = tiny_card(classes=("ok", "scratch", "dent"))
    inspector = Inspector.load(write_tiny_model(tmp_path / "m.onnx", card))
    assert inspector.card.model_dump(exclude={"content_hash"}) == card.model_dump(exclude={"content_hash"})
