"""Recipes per product: which product (SKU) a line runs now, switched atomically and recorded.

Each product has its own active model in the registry (``andon models promote VERSION --product SKU``), and
with it that model's card: its classes and thresholds. A frame is judged under the product it names (the
``product`` query parameter or field), else under its line's selected product, else under the unnamed
default, which is the registry's top-level active model as before products existed.

``ProductSelector.select(line_id, sku, source=..., actor=...)`` is the one way a line's product changes: the
API (``PUT /v1/lines/{line_id}/product``), the OPC UA server and tests call it. A switch is:

1. in one transaction of the registry (its lock held: ``ModelRegistry.select_line``), the line's new product
   is written and a ``product_switches`` row is added;
2. this process loads the new state at once, from inside that transaction (``ModelRuntime.sync``: all
   products' models are loaded already, so it is one assignment of the snapshot); the row's ``at`` is taken
   just before that assignment;
3. the transaction commits: the switch and its record together. If it cannot, neither is there, this process
   goes back to what the line ran before, and the caller gets ``StorageError``: a switch is never in force
   unrecorded for longer than that.

A request takes one snapshot (``ModelRuntime.snapshot``) and every frame of it is judged wholly under the
product, model and thresholds of that snapshot, so no frame sees half a switch. Other worker processes
and replicas follow the database within ``registry_poll_s``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from andon.service.registry import RegistryState, check_line, check_product
from andon.service.runtime import ModelRuntime
from andon.service.tables import ProductSwitch, utcnow

#: what usually switches a line's product (``ProductSwitch.source``; any short name is kept)
SOURCES = ("api", "opcua", "cli")


@dataclass(frozen=True)
class Switch:
    """What ``select`` did: ``changed`` is False when the line already ran ``product`` (nothing recorded)."""

    line_id: str
    from_product: str | None
    to_product: str | None
    changed: bool
    record: ProductSwitch | None = None


class ProductSelector:
    def __init__(self, runtime: ModelRuntime, sessions: Callable[[], Session]) -> None:
        self.runtime = runtime
        self.registry = runtime.registry
        self.sessions = sessions

    # ---- reading -----------------------------------------------------------------------------------------
    def products(self) -> dict[str, str]:
        """Each named product and its active version (from the registry's state)."""
        state = self.registry.state()
        return {k: v["active"] for k, v in sorted(state.products.items()) if v.get("active")}

    def current(self, line_id: str) -> str | None:
        """The product ``line_id`` runs in this process now (None: the default)."""
        return self.runtime.snapshot().lines.get(check_line(line_id))

    def switches(self, *, line_id: str | None = None, limit: int = 100) -> list[ProductSwitch]:
        """The recorded switches, newest first."""
        with self.sessions() as session:
            query = select(ProductSwitch).order_by(ProductSwitch.id.desc()).limit(limit)
            if line_id is not None:
                query = query.where(ProductSwitch.line_id == line_id)
            rows = list(session.scalars(query))
            session.expunge_all()
            return rows

    # ---- switching ---------------------------------------------------------------------------------------
    def select(self, line_id: str, product: str | None, *, source: str = "api", actor: str | None = None) -> Switch:
        """Make ``line_id`` run ``product`` (None: the default), in force in this process when it returns.

        Raises ``UnknownProductError`` (422) for a product without a model, naming the known ones;
        ``InvalidVersionError`` (422) for a malformed line or product id; ``StorageError`` (503) when the switch
        could not be recorded (then nothing changed).
        """
        check_line(line_id)
        if product is not None:
            check_product(product)
        source = str(source)[:32] or "api"
        actor = None if actor is None else str(actor)[:128]
        row: list[ProductSwitch] = []
        with self.runtime.swapping:  # no registry poll between the change and this process's sync

            def before_write(before: str | None, state: RegistryState, session: Session) -> None:
                switch = ProductSwitch(
                    at=utcnow(),
                    line_id=line_id,
                    from_product=before,
                    to_product=product,
                    source=source,
                    actor=actor,
                    generation=state.generation,
                )
                session.add(switch)  # in the registry's transaction: recorded with the switch, or neither
                row.append(switch)

            def after_write(before: str | None, state: RegistryState) -> None:
                def stamp() -> None:
                    row[0].at = utcnow()  # in force from here on, in this process

                self.runtime.sync(force=True, stamp=stamp)

            try:
                before, _ = self.registry.select_line(
                    line_id, product, before_write=before_write, after_write=after_write
                )
            except BaseException:
                self.runtime.sync(force=True)  # an undone switch: back to the registry's state here too
                raise
            if not row:
                return Switch(line_id, before, product, changed=False)
            return Switch(line_id, before, product, changed=True, record=row[0])
