"""The models a running service uses: the active one and an optional shadow, swapped atomically.

A swap is: load the new file, validate it (``Inspector.load`` checks the card, hash and signature), warm it
up, and only then replace the ``(active, shadow)`` pair in one assignment. A request takes the pair once,
at its start (``snapshot()``), so in-flight requests finish on the model they started with, and every record
names the model (version and hash) that produced it. The registry (in the database, its files in the store) is
the source of truth: a poller brings each worker to it every ``registry_poll_s``, whichever process (the CLI,
another worker, another replica on another machine) changed it. The bound: a change is served by every
replica within ``registry_poll_s`` plus the time to fetch the file (once per replica), verify its sha256, load
and warm it. While the database cannot be read, a worker keeps serving the models it has loaded.

Products (recipes per SKU, ``andon.service.products``): every named product's active model is loaded too,
and the snapshot carries them with the line -> product selection, so that a frame's product, model and
thresholds all come from the one snapshot its request took (``Models.judge``): no frame sees half a switch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from andon.errors import AndonError, StorageError, UnknownProductError
from andon.inspect.inspector import Inspector
from andon.service.registry import ModelEntry, ModelRegistry
from andon.service.settings import Settings

log = logging.getLogger("andon.service")


_EMPTY: Mapping = MappingProxyType({})


@dataclass(frozen=True)
class Models:
    active: Inspector | None
    shadow: Inspector | None
    generation: int = -1
    #: each named product's active model
    products: Mapping[str, Inspector] = field(default_factory=lambda: _EMPTY)
    #: the product each line runs (lines not named run the default)
    lines: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def product_for(self, line_id: str, product: str | None = None) -> str | None:
        """The product a frame is judged under: the one it names, else its line's, else None (the default)."""
        return product if product is not None else self.lines.get(line_id)

    def judge(self, line_id: str, product: str | None = None) -> tuple[str | None, Inspector | None]:
        """(product, the model that judges it) for a frame of ``line_id``; an unknown product is a 422."""
        chosen = self.product_for(line_id, product)
        if chosen is None:
            return None, self.active
        inspector = self.products.get(chosen)
        if inspector is None:
            known = ", ".join(sorted(self.products)[:40]) or "none"
            raise UnknownProductError(
                f"unknown product {chosen!r}{'' if product is not None else f' (selected for line {line_id})'}; "
                f"known products: {known}"
            )
        return chosen, inspector

    def inspectors(self) -> list[Inspector]:
        return [m for m in (self.active, self.shadow, *self.products.values()) if m is not None]


class ModelRuntime:
    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self._models = Models(None, None)
        #: held by a swap; reentrant: a line's product switch holds it across writing the state and syncing
        self._swap_lock = threading.RLock()
        #: ``with runtime.swapping:`` no other swap (the registry poller's included) runs in between
        self.swapping = self._swap_lock
        self._signature: object = object()
        self.last_error: str | None = None
        self.on_swap: list = []  # callables(Models) run after each change
        self._warm: dict[str, Inspector] = {}  # preloaded by promote/rollback/shadow, by content hash

    def snapshot(self) -> Models:
        return self._models

    @property
    def ready(self) -> bool:
        """A model can judge frames: the default's, or a product's (a plant that runs products only)."""
        models = self._models
        return models.active is not None or bool(models.products)

    def load(self, entry: ModelEntry) -> Inspector:
        """Load, validate and warm up a registry entry (raises ``AndonError`` when it is unusable)."""
        return Inspector.load(
            entry.path,
            threads=self.settings.intra_op_threads,
            max_pixels=self.settings.max_pixels,
            allowed_formats=self.settings.allowed_formats,
            warmup=True,
        )

    def validate_file(self, path) -> None:
        """Registry ``validate`` hook: a file that does not load and warm up is never registered."""
        Inspector.load(
            path,
            threads=1,
            max_pixels=self.settings.max_pixels,
            allowed_formats=self.settings.allowed_formats,
            warmup=True,
        )

    def sync(self, *, force: bool = False, stamp: Callable[[], None] | None = None) -> bool:
        """Bring the loaded models (and the lines' products) to the registry state; True when the loaded
        models changed (a line's product switch alone is not a model swap). ``stamp`` runs just before the new
        snapshot is put in place (a product switch takes its time there)."""
        try:
            signature = self.registry.signature()
        except AndonError as exc:  # the database is down: keep serving what is loaded, say why on the next change
            self._unreadable(exc)
            return False
        if not force and signature == self._signature:
            return False
        with self._swap_lock:
            current = self._models
            try:
                signature = self.registry.signature()
                state = self.registry.state()
                active = self._resolve(state.active, current.active)
                shadow = self._resolve(state.shadow, current.shadow) if state.shadow != state.active else None
                products = {
                    sku: self._resolve(p["active"], current.products.get(sku))
                    for sku, p in sorted(state.products.items())
                    if p.get("active") is not None
                }
            except StorageError as exc:  # the database or the store did not answer: try again at the next poll
                self._unreadable(exc)
                return False
            except AndonError as exc:
                self.last_error = f"cannot load the model the registry names: {exc}"
                log.error(self.last_error)
                self._signature = signature  # do not retry a broken file every poll; the next change retries
                return False
            self._signature = signature
            self.last_error = None
            lines = dict(state.lines)  # a line naming a product without a model: its frames get a 422 naming it
            models_changed = not (
                active is current.active
                and shadow is current.shadow
                and products.keys() == current.products.keys()
                and all(products[k] is current.products[k] for k in products)
            )
            if not models_changed and lines == dict(current.lines):
                return False
            new = Models(active, shadow, state.generation, MappingProxyType(products), MappingProxyType(lines))
            if stamp is not None:
                stamp()
            self._models = new
        if not models_changed:
            log.info("lines' products now: %s", dict(lines) or "the default everywhere")
            return False
        for hook in self.on_swap:
            hook(self._models)
        log.info(
            "models now: active %s, shadow %s%s",
            _name(active),
            _name(shadow),
            "".join(f", product {k} {_name(v)}" for k, v in products.items()),
        )
        return True

    def _unreadable(self, exc: AndonError) -> None:
        message = f"cannot read the model registry: {exc}"
        if message != self.last_error:
            log.error("%s (the loaded models keep serving)", message)
        self.last_error = message
        self._signature = object()  # read it all again once the registry answers

    def _resolve(self, version: str | None, loaded: Inspector | None) -> Inspector | None:
        if version is None:
            return None
        entry = self.registry.get(version)
        if _same(loaded, entry):
            return loaded
        for candidate in self._models.inspectors():
            if _same(candidate, entry):
                return candidate  # promoting the shadow reuses its warm session
        warm = self._warm.pop(entry.version, None)
        return warm if warm is not None else self.load(entry)

    def promote(self, version: str, *, product: str | None = None) -> Models:
        """Load + validate + warm ``version`` first, then make it active (of ``product``) everywhere."""
        entry = self.registry.get(version)
        self._preload(entry)
        self.registry.promote(version, product=product)
        self.sync(force=True)
        return self._models

    def rollback(self, *, product: str | None = None) -> Models:
        state = self.registry.state()
        previous = state.previous if product is None else (state.products.get(product) or {}).get("previous")
        if previous is not None:
            self._preload(self.registry.get(previous))
        self.registry.rollback(product=product)
        self.sync(force=True)
        return self._models

    def set_shadow(self, version: str | None) -> Models:
        if version is not None:
            self._preload(self.registry.get(version))
        self.registry.set_shadow(version)
        self.sync(force=True)
        return self._models

    def _preload(self, entry: ModelEntry) -> None:
        """Fail before touching the registry state if the file does not load (keeps the old model)."""
        for loaded in self._models.inspectors():
            if _same(loaded, entry):
                return
        self._warm = {entry.version: self.load(entry)}  # sync() takes it from here

    def bootstrap(self, model_file) -> None:
        """``--model FILE`` on start: register it; make it active when nothing is. A registry that cannot be
        reached now (the database or the store is down) leaves the service up, not ready, serving what it has."""
        try:
            entry, created = self.registry.add_file(model_file, validate=self.validate_file)
        except StorageError as exc:
            self.last_error = f"--model {model_file} could not be registered: {exc}"
            log.error(self.last_error)
            return
        state = self.registry.state()
        if state.active is None:
            self.registry.promote(entry.version)
            log.info("model %s (%s) registered and promoted", entry.version, model_file)
        elif state.active != entry.version:
            log.warning(
                "registry's active model is %s; %s (version %s) was %s but not promoted: "
                "'andon models promote %s' makes it active",
                state.active,
                model_file,
                entry.version,
                "registered" if created else "already registered",
                entry.version,
            )


def _same(inspector: Inspector | None, entry: ModelEntry) -> bool:
    return (
        inspector is not None
        and inspector.model_version == entry.version
        and inspector.model_hash == entry.content_hash
    )


def _name(inspector: Inspector | None) -> str:
    return "none" if inspector is None else f"{inspector.model_version} ({inspector.model_hash[:12]})"
