"""Reading and writing the model card inside an ONNX file, and the file's content hash.

The card is JSON in ``metadata_props["andon.card"]``. ``content_hash`` is the sha256 of the model
serialised deterministically with that entry removed, so it identifies the network and its weights, and a
card edited by hand (thresholds changed, say) does not change it, while any change to the graph does.
"""

from __future__ import annotations

import hashlib

import onnx

from andon.errors import ModelCardError
from andon.inspect.card import CARD_METADATA_KEY, ModelCard


def content_hash(model: onnx.ModelProto) -> str:
    """sha256 (hex) of the model without its andon card."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    keep = [p for p in stripped.metadata_props if p.key != CARD_METADATA_KEY]
    del stripped.metadata_props[:]
    stripped.metadata_props.extend(keep)
    return hashlib.sha256(stripped.SerializeToString(deterministic=True)).hexdigest()


def embed_card(model: onnx.ModelProto, card: ModelCard) -> ModelCard:
    """Write ``card`` (with its content_hash set) into ``model``'s metadata; returns the card as written."""
    card = card.replace(content_hash=content_hash(model))
    keep = [p for p in model.metadata_props if p.key != CARD_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    entry = model.metadata_props.add()
    entry.key = CARD_METADATA_KEY
    entry.value = card.to_json()
    return card


def read_card(model: onnx.ModelProto, *, source: str = "model") -> ModelCard:
    """The card stored in ``model``; ``ModelCardError`` when absent or invalid."""
    for prop in model.metadata_props:
        if prop.key == CARD_METADATA_KEY:
            return ModelCard.from_json(prop.value)
    raise ModelCardError(
        f"{source} has no andon model card (metadata key '{CARD_METADATA_KEY}'); export it with 'andon export'"
    )
