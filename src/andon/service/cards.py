"""The model card behind a stored inspection (by its model hash): classes to re-label to, heatmap geometry.

The loaded models answer first; older versions are read from the registry once and cached. A record whose
model is no longer in the registry still works: its classes come from its stored scores, and its heatmap is
drawn without the model's preprocessing geometry. One ``CardLookup`` per service (``ServiceContext.cards``)
serves the JSON routes (verdicts, heatmaps) and the review station's pages.
"""

from __future__ import annotations

import threading

from andon.inspect.card import ModelCard
from andon.service.registry import ModelRegistry
from andon.service.review.verdicts import ClassInfo
from andon.service.runtime import ModelRuntime
from andon.service.tables import Inspection


class CardLookup:
    def __init__(self, runtime: ModelRuntime, registry: ModelRegistry) -> None:
        self._runtime = runtime
        self._registry = registry
        self._cache: dict[str, ModelCard | None] = {}
        self._lock = threading.Lock()

    def card(self, model_hash: str) -> ModelCard | None:
        models = self._runtime.snapshot()
        for inspector in (models.active, models.shadow):
            if inspector is not None and inspector.model_hash == model_hash:
                return inspector.card
        with self._lock:
            if model_hash not in self._cache:
                self._cache[model_hash] = self._from_registry(model_hash)
            return self._cache[model_hash]

    def _from_registry(self, model_hash: str) -> ModelCard | None:
        entry = self._registry.find_hash(model_hash)
        if entry is None:
            return None
        import onnx

        from andon.inspect.onnxfile import read_card

        try:
            return read_card(onnx.load(str(entry.path), load_external_data=False))
        except Exception:  # noqa: BLE001 - an unreadable old file: fall back to the stored scores
            return None

    def classes(self, row: Inspection) -> ClassInfo:
        return ClassInfo.from_scores(row.scores, self.card(row.model_hash))
