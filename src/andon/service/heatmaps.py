"""The stored heatmap of a record, for the JSON route (``GET /v1/inspections/{id}/heatmap``) and the review
page's heat layer: the grid, and the preprocessing of the model that made it, which maps the grid back onto
the frame (``ctx.cards``; None when that model is no longer in the registry).
"""

from __future__ import annotations

import numpy as np

from andon.errors import NotFoundError
from andon.inspect.card import PreprocessSpec
from andon.service.deps import ServiceContext
from andon.service.tables import Inspection


def stored_heatmap(ctx: ServiceContext, row: Inspection) -> tuple[np.ndarray, PreprocessSpec | None]:
    """(grid, the model's preprocessing); NotFoundError when the record kept no heatmap or it was pruned."""
    if row.heatmap_key is None:
        raise NotFoundError(f"inspection {row.id} has no stored heatmap")
    grid = ctx.pipeline.load_heatmap(row.heatmap_key)
    if grid is None:
        raise NotFoundError(f"the heatmap of inspection {row.id} is no longer stored")
    card = ctx.cards.card(row.model_hash)
    return grid, card.preprocess if card is not None else None
