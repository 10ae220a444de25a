"""The models a running service uses: the active one and an optional shadow, swapped atomically.

A swap is: load the new file, validate it (``Inspector.load`` checks the card, hash and signature), warm it
up, and only then replace the ``(active, shadow)`` pair in one assignment. A request takes the pair once,
at its start (``snapshot()``), so in-flight requests finish on the model they started with, and every record
names the model (version and hash) that produced it. The registry's state file is the source of truth: a
poller brings each worker to it, whichever process (CLI, another worker) changed it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from andon.errors import AndonError
from andon.inspect.inspector import Inspector
from andon.service.registry import ModelEntry, ModelRegistry
from andon.service.settings import Settings

log = logging.getLogger("andon.service")


@dataclass(frozen=True)
class Models:
    active: Inspector | None
    shadow: Inspector | None
    generation: int = -1


class ModelRuntime:
    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self._models = Models(None, None)
        self._swap_lock = threading.Lock()
        self._signature: object = object()
        self.last_error: str | None = None
        self.on_swap: list = []  # callables(Models) run after each change
        self._warm: dict[str, Inspector] = {}  # preloaded by promote/rollback/shadow, by content hash

    def snapshot(self) -> Models:
        return self._models

    @property
    def ready(self) -> bool:
        return self._models.active is not None

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

    def sync(self, *, force: bool = False) -> bool:
        """Bring the loaded models to the registry state; True when something changed."""
        signature = self.registry.signature()
        if not force and signature == self._signature:
            return False
        with self._swap_lock:
            signature = self.registry.signature()
            state = self.registry.state()
            current = self._models
            try:
                active = self._resolve(state.active, current.active)
                shadow = self._resolve(state.shadow, current.shadow) if state.shadow != state.active else None
            except AndonError as exc:
                self.last_error = f"cannot load the model the registry names: {exc}"
                log.error(self.last_error)
                self._signature = signature  # do not retry a broken file every poll; the next change retries
                return False
            self._signature = signature
            self.last_error = None
            if active is current.active and shadow is current.shadow:
                return False
            self._models = Models(active, shadow, state.generation)
        for hook in self.on_swap:
            hook(self._models)
        log.info("models now: active %s, shadow %s", _name(active), _name(shadow))
        return True

    def _resolve(self, version: str | None, loaded: Inspector | None) -> Inspector | None:
        if version is None:
            return None
        entry = self.registry.get(version)
        if _same(loaded, entry):
            return loaded
        for candidate in (self._models.active, self._models.shadow):
            if _same(candidate, entry):
                return candidate  # promoting the shadow reuses its warm session
        warm = self._warm.pop(entry.version, None)
        return warm if warm is not None else self.load(entry)

    def promote(self, version: str) -> Models:
        """Load + validate + warm ``version`` first, then make it active everywhere."""
        entry = self.registry.get(version)
        self._preload(entry)
        self.registry.promote(version)
        self.sync(force=True)
        return self._models

    def rollback(self) -> Models:
        state = self.registry.state()
        if state.previous is not None:
            self._preload(self.registry.get(state.previous))
        self.registry.rollback()
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
        models = self._models
        for loaded in (models.active, models.shadow):
            if _same(loaded, entry):
                return
        self._warm = {entry.version: self.load(entry)}  # sync() takes it from here

    def bootstrap(self, model_file) -> None:
        """``--model FILE`` on start: register it; make it active when nothing is."""
        entry, created = self.registry.add_file(model_file, validate=self.validate_file)
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
