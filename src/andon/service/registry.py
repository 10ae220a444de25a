"""The model registry: every deployed model version, and which one is active, previous and shadow.

Shared by every replica: the state is in the service's database, the files in its store.

* **State** (tables of migration 0007): ``model_versions`` (version, name, content hash, file sha256, size,
  added_at, source, the store key, the card's summary), ``registry_state`` (one row: active, previous,
  shadow, generation), ``registry_history``, ``registry_products`` (per SKU: active, previous) and
  ``registry_lines`` (line -> product). Every change is one transaction that first takes the state row's lock
  (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's writer lock, taken by a first UPDATE), so the CLI on one
  machine and the API of any replica can all change it; each change bumps ``generation``.
* **Files** (``andon.service.storage.make_model_store``): with ``image_store: s3`` the objects
  ``models/<version>/model.onnx`` in the bucket, with a verified local copy per replica under
  ``<data_dir>/cache/models`` (onnxruntime needs a path); on the local disk today's layout,
  ``<data_dir>/models/versions/<version>/model.onnx``. Every file is checked against its registered sha256 before
  it is used: a changed or damaged object is refused (``ModelFileError``) and never served.
* **Adding** writes the file to the store first and commits the row after it, under the lock; a failed add
  (validation, store, database) leaves no row, and the object it may have written is removed again.
* **Following**: ``signature()`` is one query of the generation; every worker polls it every
  ``registry_poll_s`` (``ModelRuntime.sync``), so a change reaches every replica within ``registry_poll_s`` plus
  the time to fetch, verify, load and warm the new model (docs/scaling.md). On PostgreSQL a change also
  ``NOTIFY``s ``andon_registry`` at commit, and each worker's ``listen()`` thread wakes its poll at once.
* **Upgrade**: a data folder of the file-based registry (``<data_dir>/models/state.json`` + ``versions/``) is
  imported into empty tables on first use, once (``registry_state.imported_from``); the files are left in
  place (on the local disk they are already where the store keeps them) and are no longer read.

Products (recipes per SKU): the unnamed default is the top-level active/previous/shadow, as it always was.
Each named product has its own active and previous version (``promote(version, product=SKU)``), judged with
that version's card (its thresholds); ``lines`` maps a line to the product it currently runs
(``select_line``). A product exists from its first promotion on; a line that selects none runs the default.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from sqlalchemy import delete, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from andon.errors import (
    AndonError,
    InvalidVersionError,
    ModelFileError,
    ModelRuntimeError,
    NotFoundError,
    RegistryError,
    StorageError,
    UnknownProductError,
)
from andon.inspect.onnxfile import content_hash, read_card
from andon.service.storage import ImageStore, LocalDiskStore, make_dirs_durably, write_durably
from andon.service.tables import ModelVersion, RegistryEvent, RegistryLine, RegistryProduct, RegistryStateRow

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_VERSION_RULE = "letters, digits and . _ + - (at most 64 characters, the first a letter or digit), e.g. 2026.11.1"
_PRODUCT_RULE = "letters, digits and . _ + - (at most 64 characters, the first a letter or digit), e.g. SKU-4711"
#: a line id, as a frame's line_id is checked (andon.service.schemas.FrameMeta)
_LINE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
_HISTORY_KEEP = 200
#: the PostgreSQL channel a committed registry change is announced on (``ModelRegistry.listen``)
NOTIFY_CHANNEL = "andon_registry"
_SHOWN = 80
log = logging.getLogger("andon.service")


def shown(value: object, limit: int = _SHOWN) -> str:
    """``value`` quoted for a message, cut to ``limit`` characters with "…" (a request may send 5,000)."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def check_version(version: object, *, where: str = "") -> str:
    """``version`` when it can name a registry entry, else ``InvalidVersionError`` (422: a bad request)."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise InvalidVersionError(
            f"model version {shown(version)}{where} is not a valid version name; use {_VERSION_RULE}"
        )
    return version


def check_product(product: object, *, where: str = "") -> str:
    """``product`` when it can name a product (SKU), else ``InvalidVersionError`` (422: a bad request)."""
    if not isinstance(product, str) or not _VERSION.fullmatch(product):
        raise InvalidVersionError(f"product {shown(product)}{where} is not a valid product id; use {_PRODUCT_RULE}")
    return product


def check_line(line_id: object) -> str:
    if not isinstance(line_id, str) or not _LINE.fullmatch(line_id):
        raise InvalidVersionError(
            f"line id {shown(line_id)} is not valid; use letters, digits and . _ : / - (at most 64 characters, "
            "the first a letter or digit), as a frame's line_id"
        )
    return line_id


@dataclass
class RegistryState:
    active: str | None = None
    previous: str | None = None
    shadow: str | None = None
    generation: int = 0
    history: list[dict] = field(default_factory=list)
    #: per named product: {"active": version, "previous": version or None}
    products: dict[str, dict[str, str | None]] = field(default_factory=dict)
    #: the product each line runs now (a line not named here runs the default)
    lines: dict[str, str] = field(default_factory=dict)

    def pointers(self) -> tuple:
        """Everything a change may move (the history and generation aside)."""
        products = tuple(sorted((k, v.get("active"), v.get("previous")) for k, v in self.products.items()))
        return (self.active, self.previous, self.shadow, products, tuple(sorted(self.lines.items())))

    def product_version(self, product: str) -> str:
        """The active version of ``product``, or ``UnknownProductError`` naming the known ones."""
        entry = self.products.get(product)
        if entry is None or entry.get("active") is None:
            raise UnknownProductError(
                f"unknown product {shown(product)}; known products: {self.known_products()}"
                " (a product is made by promoting a model for it: 'andon models promote VERSION --product SKU')"
            )
        return entry["active"]  # type: ignore[return-value]

    def known_products(self) -> str:
        names = sorted(k for k, v in self.products.items() if v.get("active"))
        return ", ".join(names[:40]) + (f" and {len(names) - 40} more" if len(names) > 40 else "") or "none"


@dataclass(frozen=True)
class ModelEntry:
    version: str
    name: str
    content_hash: str
    file_sha256: str
    size_bytes: int
    added_at: str
    source: str
    #: the file's key in the model store
    store_key: str = field(default="", compare=False, repr=False)
    #: the card's summary, as registered
    card: dict | None = field(default=None, compare=False, repr=False)
    _fetch: Callable[[ModelEntry], Path] | None = field(default=None, compare=False, repr=False)

    @property
    def path(self) -> Path:
        """A local file with exactly the registered bytes (fetched from the store and verified on first use);
        ``ModelFileError`` when the stored file is missing or does not match its sha256."""
        if self._fetch is None:
            raise RegistryError(f"model version {self.version} has no registry to fetch its file from")
        return self._fetch(self)

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "name": self.name,
            "content_hash": self.content_hash,
            "file_sha256": self.file_sha256,
            "size_bytes": self.size_bytes,
            "added_at": self.added_at,
            "source": self.source,
        }


class ModelRegistry:
    """Versions (rows + files in the store) plus the active/previous/shadow pointers, in the database.

    ``sessions`` makes sessions of the service's database (migrated before first use); ``store`` and
    ``prefix`` say where the files go (``make_model_store``); ``root`` is the local folder of this process
    (staging of uploads; the file-based registry of old, imported once); ``cache_dir`` holds verified copies
    of the store's files (None when the store is the local disk: its files are used where they are).
    """

    def __init__(
        self,
        sessions: Callable[[], Session],
        store: ImageStore,
        *,
        root: Path,
        prefix: str = "versions",
        cache_dir: Path | None = None,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.prefix = prefix
        self.root = Path(root)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.state_path = self.root / "state.json"  # the file-based registry's state (imported, then unread)
        self.versions_dir = self.root / "versions"
        self._local = threading.local()  # the session of the change this thread is making, if any
        self._ready = False
        self._ready_lock = threading.Lock()
        self._verified: dict[str, tuple[int, int, int]] = {}  # file -> its stat when its sha256 was checked
        self._fetch_lock = threading.Lock()

    @property
    def where(self) -> str:
        """The store, for messages: a folder or ``s3://bucket/prefix/``."""
        if isinstance(self.store, LocalDiskStore):
            return str(self.store.root)
        return str(getattr(self.store, "where", type(self.store).__name__))

    # ---- reading -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _read(self) -> Iterator[Session]:
        current = getattr(self._local, "session", None)
        if current is not None:  # inside a change on this thread: read what it has written so far
            yield current
            return
        self._ensure()
        try:
            with self.sessions() as session:
                yield session
        except SQLAlchemyError as exc:
            log.warning("model registry: the database read failed: %s", exc)
            raise StorageError(
                "the model registry's database cannot be read (it is down or unreachable); retry"
            ) from None

    def state(self) -> RegistryState:
        with self._read() as session:
            return self._state_in(session)

    def _state_in(self, session: Session) -> RegistryState:
        row = session.get(RegistryStateRow, 1)
        if row is None:
            raise RegistryError("the database has no model registry state row; run the migrations (andon serve does)")
        products = {
            p.product: {"active": p.active, "previous": p.previous}
            for p in session.scalars(select(RegistryProduct).order_by(RegistryProduct.product))
        }
        lines = {r.line_id: r.product for r in session.scalars(select(RegistryLine).order_by(RegistryLine.line_id))}
        events = session.scalars(select(RegistryEvent).order_by(RegistryEvent.id.desc()).limit(_HISTORY_KEEP))
        return RegistryState(
            active=row.active,
            previous=row.previous,
            shadow=row.shadow,
            generation=row.generation,
            history=[dict(e.event) for e in reversed(list(events))],
            products=products,
            lines=lines,
        )

    def signature(self) -> tuple[int]:
        """The state's generation (every change bumps it): one indexed read, cheap enough to poll every second."""
        with self._read() as session:
            generation = session.scalar(select(RegistryStateRow.generation).where(RegistryStateRow.id == 1))
        return (-1 if generation is None else int(generation),)

    def entries(self) -> list[ModelEntry]:
        with self._read() as session:
            rows = session.scalars(select(ModelVersion).order_by(ModelVersion.added_at, ModelVersion.version))
            return [self._entry(r) for r in rows]

    def get(self, version: str) -> ModelEntry:
        check_version(version)
        with self._read() as session:
            row = session.get(ModelVersion, version)
            if row is not None:
                return self._entry(row)
        names = [e.version for e in self.entries()]
        known = ", ".join(names[-20:]) + (f" and {len(names) - 20} older" if len(names) > 20 else "")
        raise NotFoundError(f"model version {version!r} is not in the registry; registered: {known or 'none'}")

    def find_hash(self, digest: str) -> ModelEntry | None:
        with self._read() as session:
            row = session.scalars(
                select(ModelVersion).where(ModelVersion.content_hash == digest).order_by(ModelVersion.added_at)
            ).first()
            return None if row is None else self._entry(row)

    def _entry(self, row: ModelVersion) -> ModelEntry:
        return ModelEntry(
            version=row.version,
            name=row.name,
            content_hash=row.content_hash,
            file_sha256=row.file_sha256,
            size_bytes=int(row.size_bytes),
            added_at=row.added_at.isoformat(timespec="milliseconds"),
            source=row.source,
            store_key=row.store_key,
            card=row.card,
            _fetch=self.fetch,
        )

    # ---- the files -----------------------------------------------------------------------------------
    def key(self, version: str) -> str:
        return f"{self.prefix}/{check_version(version)}/model.onnx"

    def fetch(self, entry: ModelEntry) -> Path:
        """A local file holding ``entry``'s registered bytes: the store's own file on the local disk, else this
        replica's cached copy (downloaded once). Its sha256 is checked against the registered one before it is
        handed out (once per file state); a mismatch or a missing object is ``ModelFileError``."""
        key = entry.store_key or self.key(entry.version)
        with self._fetch_lock:
            if isinstance(self.store, LocalDiskStore) and self.cache_dir is None:
                path = self.store.path(key)
                if not path.is_file():
                    raise ModelFileError(
                        f"model version {entry.version}: its file {path} is missing from the model store; "
                        "add the exported file again under a new version"
                    )
                self._check_file(entry, path, f"its file {path}")
                return path
            assert self.cache_dir is not None
            path = self.cache_dir / entry.version / f"{entry.file_sha256[:16]}.onnx"
            if path.is_file():
                with contextlib.suppress(ModelFileError):  # a damaged copy: fetch it again
                    self._check_file(entry, path, "its cached copy")
                    return path
            try:
                data = self.store.get(key)
            except NotFoundError:
                raise ModelFileError(
                    f"model version {entry.version}: its file {key} is missing from the model store {self.where}; "
                    "add the exported file again under a new version"
                ) from None
            _check_bytes(entry, data, f"the object {key} in the model store {self.where}")
            make_dirs_durably(path.parent)
            write_durably(path, data)
            self._mark_verified(path)
            return path

    def _check_file(self, entry: ModelEntry, path: Path, what: str) -> None:
        st = path.stat()
        if self._verified.get(str(path)) == (st.st_ino, st.st_mtime_ns, st.st_size):
            return
        _check_bytes(entry, path.read_bytes(), what)
        self._verified[str(path)] = (st.st_ino, st.st_mtime_ns, st.st_size)

    def _mark_verified(self, path: Path) -> None:
        st = path.stat()
        self._verified[str(path)] = (st.st_ino, st.st_mtime_ns, st.st_size)

    # ---- what an API answer may show -------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """``text`` without the server's paths (a file in the registry is named by its version) and without
        onnxruntime's own message (the log has it)."""
        folders = [self.root] + ([self.cache_dir] if self.cache_dir is not None else [])
        for folder in folders:
            for root in sorted({str(folder.resolve()), str(folder)}, key=len, reverse=True):
                text = re.sub(re.escape(root) + r"/versions/([^/\s]+)/model\.onnx", r"model version \1", text)
                text = re.sub(re.escape(root) + r"/\.staging-([^/\s]+)/model\.onnx", r"the uploaded model \1", text)
                text = re.sub(re.escape(root) + r"/([^/\s]+)/[0-9a-f]{16}\.onnx", r"model version \1", text)
                text = text.replace(root, "the model registry")
        return re.sub(r"(onnxruntime cannot load [^:]+): .*", r"\1 " + _ORT_PUBLIC, text)

    def public_error(self, exc: AndonError) -> AndonError:
        """``exc`` as the API may answer it: no server paths, no onnxruntime internals (logged here)."""
        if isinstance(exc, ModelRuntimeError):
            log.warning("onnxruntime refused a model: %s", exc)
            head = exc.message[: -len(exc.detail)].rstrip(": ") if exc.detail else exc.message
            return ModelFileError(self.redact(f"{head} {_ORT_PUBLIC}"))
        redacted = self.redact(exc.message)
        if redacted != exc.message:
            log.warning("model registry: %s", exc)
        return _reworded(exc, self.redact)

    # ---- changing ------------------------------------------------------------------------------------
    def add(
        self, data: bytes, *, source: str = "upload", validate: Callable[[Path], None] | None = None
    ) -> tuple[ModelEntry, bool]:
        """Register an exported model (the card's version names it). Returns (entry, created).

        Adding the same file again is a no-op; a different file under an existing version is refused. Two
        versions may share a content hash (same network, a card with other thresholds): the version, not the
        hash, identifies a deployment.
        ``validate`` (e.g. loading it into an inspector) runs on the staged file before it is registered.
        The file goes to the store first, then the row commits (under the registry's lock); if either fails,
        nothing is registered and the object is removed again.
        """
        card, digest = _inspect_model_bytes(data, source)
        file_sha = hashlib.sha256(data).hexdigest()
        version = check_version(card.version, where=f" (from the card of {source}; re-export with --version)")
        existing = self._known(version, file_sha)
        if existing is not None:
            return existing, False
        staging = self.root / f".staging-{version}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            make_dirs_durably(staging)
            write_durably(staging / "model.onnx", data)
            try:
                if validate is not None:
                    validate(staging / "model.onnx")
            except AndonError as exc:  # it names the staged file: name what the caller gave instead
                staged = [str(staging / "model.onnx"), str((staging / "model.onnx").resolve())]
                raise _reworded(exc, lambda text: _replace_all(text, staged, source)) from None
            key = self.key(version)
            put: list[str] = []

            def remove_object() -> None:
                if put:
                    try:
                        self.store.delete(key)
                    except AndonError as exc:  # an object without a row is harmless; the next add replaces it
                        log.warning("model registry: could not remove %s after a failed add: %s", key, exc)

            with self._change(f"the registration of model version {version}", undo=[remove_object]) as session:
                row = session.get(ModelVersion, version)
                if row is not None:  # registered meanwhile by another process
                    existing = self._entry(row)
                    if existing.file_sha256 != file_sha:
                        raise _clash(version, existing.file_sha256, file_sha)
                    return existing, False
                self.store.put(key, data)
                put.append(key)
                row = ModelVersion(
                    version=version,
                    name=card.name,
                    content_hash=digest,
                    file_sha256=file_sha,
                    size_bytes=len(data),
                    added_at=dt.datetime.now(dt.timezone.utc),
                    source=str(source)[:300],
                    store_key=key,
                    card=_card_summary(card),
                )
                session.add(row)
                session.flush()
                self._write_change(session, lambda s: None, action="add", version=version)
                entry = self._entry(row)
            if self.cache_dir is not None:  # this replica has the verified bytes already: keep them as its copy
                cached = self.cache_dir / version / f"{file_sha[:16]}.onnx"
                with contextlib.suppress(OSError):
                    make_dirs_durably(cached.parent)
                    os.replace(staging / "model.onnx", cached)
                    self._mark_verified(cached)
            return entry, True
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _known(self, version: str, file_sha: str) -> ModelEntry | None:
        with self._read() as session:
            row = session.get(ModelVersion, version)
            if row is None:
                return None
            existing = self._entry(row)
        if existing.file_sha256 == file_sha:
            return existing
        raise _clash(version, existing.file_sha256, file_sha)

    def add_file(self, path: Path, *, validate: Callable[[Path], None] | None = None) -> tuple[ModelEntry, bool]:
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"model file {path} does not exist")
        return self.add(path.read_bytes(), source=str(path.name), validate=validate)

    def promote(self, version: str, *, product: str | None = None) -> RegistryState:
        """Make ``version`` active (of ``product``, or of the default); the active one becomes previous (the
        rollback target). Promoting for a product that does not exist yet makes it."""
        if product is not None:
            check_product(product)
        self.get(version)

        def change(s: RegistryState) -> None:
            if product is not None:
                entry = s.products.setdefault(product, {"active": None, "previous": None})
                if entry["active"] != version:
                    entry["previous"], entry["active"] = entry["active"], version
                return
            if s.active == version:
                return
            s.previous, s.active = s.active, version
            if s.shadow == version:
                s.shadow = None

        return self._update(change, action="promote", version=version, product=product)

    def rollback(self, *, product: str | None = None) -> RegistryState:
        """Swap active and previous (of ``product``, or of the default)."""
        if product is not None:
            check_product(product)

        def change(s: RegistryState) -> None:
            if product is not None:
                s.product_version(product)
                entry = s.products[product]
                if entry["previous"] is None:
                    raise RegistryError(
                        f"nothing to roll back to for product {product}: its active version is {entry['active']} "
                        "and there is no previous one; promote a version for it instead"
                    )
                entry["active"], entry["previous"] = entry["previous"], entry["active"]
                return
            if s.previous is None:
                raise RegistryError(
                    f"nothing to roll back to: active is {s.active or 'none'} and there is no "
                    "previous version; promote a version instead"
                )
            s.active, s.previous = s.previous, s.active
            if s.shadow == s.active:
                s.shadow = None

        return self._update(change, action="rollback", version=None, product=product)

    def set_shadow(self, version: str | None) -> RegistryState:
        """Score frames with ``version`` next to the active model (None stops shadowing)."""
        if version is not None:
            self.get(version)

        def change(s: RegistryState) -> None:
            if version is not None and version == s.active:
                raise RegistryError(f"version {version} is the active model; a shadow must be another version")
            s.shadow = version

        return self._update(change, action="shadow", version=version)

    def select_line(
        self,
        line_id: str,
        product: str | None,
        *,
        before_write: Callable[[str | None, RegistryState, Session], None] | None = None,
        after_write: Callable[[str | None, RegistryState], None] | None = None,
    ) -> tuple[str | None, RegistryState]:
        """Make ``line_id`` run ``product`` (None: the default); returns (the product it ran before, the state).

        ``before_write(before, state, session)`` and ``after_write(before, state)`` run inside the change's
        transaction (the registry's lock held), only when the line's product changes: the service adds its
        record of the switch to ``session`` there (it commits with the switch, or neither does), and keeps the
        switch in force in its own process (reads on this thread see the uncommitted state) before another
        process can change the state again. If the commit fails, nothing changed and ``StorageError`` says so.
        """
        check_line(line_id)
        if product is not None:
            check_product(product)
        with self._change(f"the switch of line {line_id}") as session:
            state = self._state_in(session)
            if product is not None:
                state.product_version(product)
            before = state.lines.get(line_id)
            if before == product:
                return before, state
            state = self._write_change(
                session,
                lambda s: _set_line(s, line_id, product),
                action="select",
                version=None,
                product=product,
                line=line_id,
                before_write=None if before_write is None else lambda s: before_write(before, s, session),
            )
            if after_write is not None:
                after_write(before, state)
            return before, state

    def _update(
        self, change: Callable[[RegistryState], None], *, action: str, version: str | None, product: str | None = None
    ) -> RegistryState:
        what = f"the {action} of {'product ' + product if product else 'the default model'}"
        with self._change(what) as session:
            return self._write_change(session, change, action=action, version=version, product=product)

    def _write_change(
        self,
        session: Session,
        change: Callable[[RegistryState], None],
        *,
        action: str,
        version: str | None,
        product: str | None = None,
        line: str | None = None,
        before_write: Callable[[RegistryState], None] | None = None,
    ) -> RegistryState:
        """Apply ``change`` to the state and write it to ``session`` (the caller holds the lock)."""
        state = self._state_in(session)
        before = state.pointers()
        old_products, old_lines = copy.deepcopy(state.products), dict(state.lines)
        change(state)
        if state.pointers() != before or action == "add":
            state.generation += 1
            event = {"at": _now(), "action": action, "version": version, "active": state.active, "shadow": state.shadow}
            if product is not None or line is not None:
                event["product"] = product
            if product is not None and action != "select":
                event["active"] = state.products[product]["active"]
            if line is not None:
                event["line"] = line
            state.history = [*state.history, event][-_HISTORY_KEEP:]
            if before_write is not None:
                before_write(state)
            row = session.get(RegistryStateRow, 1)
            assert row is not None  # _state_in checked it
            row.active, row.previous, row.shadow, row.generation = (
                state.active,
                state.previous,
                state.shadow,
                state.generation,
            )
            for sku, p in state.products.items():
                if old_products.get(sku) != p:
                    session.merge(RegistryProduct(product=sku, active=p.get("active"), previous=p.get("previous")))
            for line_id in set(old_lines) - set(state.lines):
                session.execute(delete(RegistryLine).where(RegistryLine.line_id == line_id))
            for line_id, sku in state.lines.items():
                if old_lines.get(line_id) != sku:
                    session.merge(RegistryLine(line_id=line_id, product=sku))
            session.add(RegistryEvent(generation=state.generation, action=action, event=event))
            session.flush()
            if session.get_bind().dialect.name == "postgresql":  # delivered to the listeners at commit, if any
                session.execute(
                    text("SELECT pg_notify(:channel, :g)"), {"channel": NOTIFY_CHANNEL, "g": str(state.generation)}
                )
        return state

    def listen(self, wake: Callable[[], None]) -> ChangeListener | None:
        """On PostgreSQL, a thread that LISTENs for committed changes and calls ``wake()`` at each (the poll
        then runs at once instead of at its next period); None on SQLite (its processes share one host: the
        poll alone)."""
        with self._read() as session:
            engine = session.get_bind()
        if engine.dialect.name != "postgresql":
            return None
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        return ChangeListener(url, wake)

    @contextlib.contextmanager
    def _change(
        self, what: str, *, undo: list[Callable[[], None]] | None = None, ready: bool = True
    ) -> Iterator[Session]:
        """One transaction holding the registry's lock; committed when the block ends, else rolled back (and
        ``undo`` run). A database failure is ``StorageError`` naming ``what``: nothing changed."""
        if ready:
            self._ensure()
        if getattr(self._local, "session", None) is not None:
            raise RegistryError("a registry change cannot start inside another one")
        try:
            with self.sessions() as session:
                _lock_state(session)
                self._local.session = session
                try:
                    yield session
                    session.commit()
                except BaseException:
                    with contextlib.suppress(SQLAlchemyError):
                        session.rollback()
                    for fn in undo or ():
                        fn()
                    raise
                finally:
                    self._local.session = None
        except SQLAlchemyError as exc:
            log.warning("model registry: %s failed in the database: %s", what, exc)
            raise StorageError(f"the database did not record {what}; it was undone (nothing changed); retry") from None

    # ---- the file-based registry of old ------------------------------------------------------------------
    def _ensure(self) -> None:
        """Import the file-based registry of ``root`` once, before the first read or change."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            if self.state_path.is_file() or any(self.versions_dir.glob("*/info.json")):
                self.import_legacy()
            self._ready = True

    def import_legacy(self) -> bool:
        """Import ``root``'s ``state.json`` + ``versions/`` into the database when its registry is still empty
        (idempotent: a registry imported or changed before is left alone). True when this call imported it."""
        raw = _read_legacy_state(self.state_path)
        with self._change(f"the import of the model registry in {self.root}", ready=False) as session:
            row = session.get(RegistryStateRow, 1)
            if row is None:
                raise RegistryError("the database has no model registry state row; run the migrations")
            if row.imported_from is not None:
                return False
            if row.generation > 0 or session.scalar(select(ModelVersion.version).limit(1)) is not None:
                log.warning(
                    "model registry: the database already holds a registry; %s (a file-based registry) was "
                    "not imported and is not read",
                    self.root,
                )
                return False
            imported = []
            for info_path in sorted(self.versions_dir.glob("*/info.json")):
                version, file = info_path.parent.name, info_path.parent / "model.onnx"
                try:
                    info = json.loads(info_path.read_text())
                    data = file.read_bytes()
                except (OSError, ValueError) as exc:
                    log.warning(
                        "model registry: version %s in %s is unreadable, not imported: %s", version, self.root, exc
                    )
                    continue
                key = self.key(version)
                if not (isinstance(self.store, LocalDiskStore) and self.store.path(key) == file):
                    self.store.put(key, data)  # the file first, then the row
                if hashlib.sha256(data).hexdigest() != info["file_sha256"]:
                    log.warning("model registry: version %s in %s does not match its info.json's sha256", version, file)
                card = None
                with contextlib.suppress(Exception):
                    card = _card_summary(read_card(onnx.load_from_string(data), source=str(file)))
                session.add(
                    ModelVersion(
                        version=version,
                        name=info["name"],
                        content_hash=info["content_hash"],
                        file_sha256=info["file_sha256"],
                        size_bytes=int(info["size_bytes"]),
                        added_at=_parse_time(info.get("added_at")),
                        source=str(info.get("source", ""))[:300],
                        store_key=key,
                        card=card,
                    )
                )
                imported.append(version)
            row.active, row.previous, row.shadow = raw["active"], raw["previous"], raw["shadow"]
            row.generation = max(int(raw["generation"]), 1)
            row.imported_from = str(self.root.resolve())[:1000]
            row.imported_at = dt.datetime.now(dt.timezone.utc)
            for sku, p in raw["products"].items():
                session.add(RegistryProduct(product=sku, active=p.get("active"), previous=p.get("previous")))
            for line_id, sku in raw["lines"].items():
                session.add(RegistryLine(line_id=line_id, product=sku))
            for event in raw["history"][-_HISTORY_KEEP:]:
                session.add(
                    RegistryEvent(
                        at=_parse_time(event.get("at")),
                        generation=row.generation,
                        action=str(event.get("action", "?"))[:16],
                        event=event,
                    )
                )
        log.warning(
            "model registry: imported %s (versions %s; active %s) into the database; its state.json and "
            "versions/ are left in place and no longer read",
            self.root,
            ", ".join(imported) or "none",
            raw["active"] or "none",
        )
        return True


class ChangeListener:
    """``LISTEN andon_registry`` on its own PostgreSQL connection, in a daemon thread: ``wake()`` for every
    change any process commits. A lost connection is retried every 5 s (meanwhile the poll alone keeps the
    bound); ``stop()`` ends it within a quarter of a second."""

    def __init__(self, url: str, wake: Callable[[], None]) -> None:
        self._url, self._wake = url, wake
        self._stop = threading.Event()
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="andon-registry-listen", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psycopg

        failed = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.listening.set()
                    failed = False
                    self._wake()  # changes made while it was not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.25):
                            self._wake()
            except Exception as exc:  # noqa: BLE001 - the database is away: the poll carries on alone
                self.listening.clear()
                if not failed:
                    log.warning("model registry: LISTEN for changes failed (the poll goes on): %s", exc)
                failed = True
                self._stop.wait(5.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3.0)


def _lock_state(session: Session) -> None:
    """Take the registry's lock for this transaction: SQLite's writer lock (a first write), or the state row's
    lock on PostgreSQL (``SELECT ... FOR UPDATE``)."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("UPDATE registry_state SET generation = generation WHERE id = 1"))
    session.scalars(select(RegistryStateRow).where(RegistryStateRow.id == 1).with_for_update()).one_or_none()


def _read_legacy_state(path: Path) -> dict:
    """state.json of the file-based registry, checked as that registry read it."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raw = {}
    except (OSError, ValueError) as exc:
        raise RegistryError(f"registry state {path} is unreadable: {exc}") from None
    products, lines = raw.get("products") or {}, raw.get("lines") or {}
    if not (
        isinstance(raw, dict)
        and isinstance(products, dict)
        and all(isinstance(v, dict) for v in products.values())
        and isinstance(lines, dict)
        and all(isinstance(v, str) for v in lines.values())
    ):
        raise RegistryError(
            f"registry state {path} is unreadable: 'products' must map a product to "
            "{active, previous} and 'lines' a line to a product"
        )
    return {
        "active": raw.get("active"),
        "previous": raw.get("previous"),
        "shadow": raw.get("shadow"),
        "generation": int(raw.get("generation", 0)),
        "history": [e for e in raw.get("history", []) if isinstance(e, dict)],
        "products": {k: {"active": v.get("active"), "previous": v.get("previous")} for k, v in products.items()},
        "lines": dict(lines),
    }


def _parse_time(value: object) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return dt.datetime.now(dt.timezone.utc)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.timezone.utc)


def _check_bytes(entry: ModelEntry, data: bytes, what: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.file_sha256:
        raise ModelFileError(
            f"model version {entry.version}: {what} does not match the registered file (sha256 {digest[:12]}, "
            f"registered {entry.file_sha256[:12]}): it was changed or damaged in the store and is not used; put "
            "the original file back, or add the exported model again under a new version"
        )


def _clash(version: str, registered: str, new: str) -> RegistryError:
    return RegistryError(
        f"version {version} is already registered with a different file "
        f"(sha256 {registered[:12]}, this file {new[:12]}); export the new model with a new version"
    )


def _card_summary(card) -> dict:
    return card.model_dump(mode="json")


def _set_line(state: RegistryState, line_id: str, product: str | None) -> None:
    if product is None:
        state.lines.pop(line_id, None)
    else:
        state.lines[line_id] = product


def _inspect_model_bytes(data: bytes, source: str):
    if not data:
        raise ModelFileError(f"model {source} is empty (0 bytes); upload an .onnx file exported by andon")
    try:
        model = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 - protobuf raises several types for garbage
        raise ModelFileError(f"model {source} ({len(data):,} bytes) is not an ONNX file") from None
    card = read_card(model, source=source)
    digest = content_hash(model)
    if card.content_hash and card.content_hash != digest:
        raise ModelFileError(
            f"model {source} was modified after export: its graph hash {digest[:12]} does not "
            f"match the card's {card.content_hash[:12]}"
        )
    return card, digest


_ORT_PUBLIC = (
    "(an operator, opset or attribute this onnxruntime cannot run, or a malformed graph; the service log has "
    "onnxruntime's message; 'andon info FILE' on the engineer's machine shows it too)"
)


def _replace_all(text: str, olds: list[str], new: str) -> str:
    for old in sorted(set(olds), key=len, reverse=True):
        text = text.replace(old, new)
    return text


def _reworded(exc: AndonError, change: Callable[[str], str]) -> AndonError:
    """A copy of ``exc`` (same class, code and status) whose message (and detail) went through ``change``."""
    new = copy.copy(exc)
    new.message = change(exc.message)
    new.hint = change(exc.hint) if exc.hint else exc.hint
    new.args = (new.message if new.hint is None else f"{new.message} ({new.hint})",)
    if isinstance(new, ModelRuntimeError):
        new.detail = change(new.detail)
    return new


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
