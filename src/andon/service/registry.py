"""The model registry on disk: every deployed model version, and which one is active, previous and shadow.

Layout under ``root`` (``<data_dir>/models``)::

    versions/<version>/model.onnx    the exported file, byte for byte
    versions/<version>/info.json     name, version, content hash, size, when and from where it was added
    state.json                       {"active", "previous", "shadow", "generation", "history",
                                      "products": {sku: {"active", "previous"}}, "lines": {line: sku}}

``state.json`` is the single source of truth and is replaced atomically (temp file, fsync, rename), under
an exclusive lock so that the CLI and the service can both change it. The service polls its signature and
swaps models when it changes, so ``andon models promote`` on the command line and ``POST
/v1/models/{version}/promote`` have the same effect on every worker.

Products (recipes per SKU): the unnamed default is the top-level active/previous/shadow, as it always was.
Each named product has its own active and previous version (``promote(version, product=SKU)``), judged with
that version's card (its thresholds); ``lines`` maps a line to the product it currently runs
(``select_line``). A product exists from its first promotion on; a line that selects none runs the default.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import fcntl
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from andon.errors import (
    AndonError,
    InvalidVersionError,
    ModelFileError,
    ModelRuntimeError,
    NotFoundError,
    RegistryError,
    UnknownProductError,
)
from andon.inspect.onnxfile import content_hash, read_card
from andon.service.storage import fsync_dir, make_dirs_durably, write_durably

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_VERSION_RULE = "letters, digits and . _ + - (at most 64 characters, the first a letter or digit), e.g. 2026.11.1"
_PRODUCT_RULE = "letters, digits and . _ + - (at most 64 characters, the first a letter or digit), e.g. SKU-4711"
#: a line id, as a frame's line_id is checked (andon.service.schemas.FrameMeta)
_LINE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
_HISTORY_KEEP = 200
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

    def to_json(self) -> str:
        return json.dumps(
            {
                "active": self.active,
                "previous": self.previous,
                "shadow": self.shadow,
                "generation": self.generation,
                "history": self.history[-_HISTORY_KEEP:],
                "products": self.products,
                "lines": self.lines,
            },
            indent=2,
        )

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
    path: Path

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
    """Versions on disk plus the active/previous/shadow pointers."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.state_path = self.root / "state.json"

    # ---- reading -------------------------------------------------------------------------------------
    def state(self) -> RegistryState:
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return RegistryState()
        except (OSError, ValueError) as exc:
            raise RegistryError(f"registry state {self.state_path} is unreadable: {exc}") from None
        products, lines = raw.get("products") or {}, raw.get("lines") or {}
        if not (
            isinstance(products, dict)
            and all(isinstance(v, dict) for v in products.values())
            and isinstance(lines, dict)
            and all(isinstance(v, str) for v in lines.values())
        ):
            raise RegistryError(
                f"registry state {self.state_path} is unreadable: 'products' must map a product to "
                "{active, previous} and 'lines' a line to a product"
            )
        return RegistryState(
            active=raw.get("active"),
            previous=raw.get("previous"),
            shadow=raw.get("shadow"),
            generation=int(raw.get("generation", 0)),
            history=list(raw.get("history", [])),
            products={k: {"active": v.get("active"), "previous": v.get("previous")} for k, v in products.items()},
            lines=dict(lines),
        )

    def signature(self) -> tuple[int, int, int] | None:
        """Changes whenever state.json is replaced: cheap enough to poll every second."""
        try:
            st = self.state_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def entries(self) -> list[ModelEntry]:
        if not self.versions_dir.is_dir():
            return []
        out = [self._entry(p.name) for p in self.versions_dir.iterdir() if (p / "info.json").is_file()]
        return sorted(out, key=lambda e: e.added_at)

    def get(self, version: str) -> ModelEntry:
        check_version(version)
        if not (self.versions_dir / version / "info.json").is_file():
            names = [e.version for e in self.entries()]
            known = ", ".join(names[-20:]) + (f" and {len(names) - 20} older" if len(names) > 20 else "")
            raise NotFoundError(f"model version {version!r} is not in the registry; registered: {known or 'none'}")
        return self._entry(version)

    def _entry(self, version: str) -> ModelEntry:
        folder = self.versions_dir / version
        info = json.loads((folder / "info.json").read_text())
        return ModelEntry(
            version=version,
            name=info["name"],
            content_hash=info["content_hash"],
            file_sha256=info["file_sha256"],
            size_bytes=info["size_bytes"],
            added_at=info["added_at"],
            source=info.get("source", ""),
            path=folder / "model.onnx",
        )

    def find_hash(self, digest: str) -> ModelEntry | None:
        return next((e for e in self.entries() if e.content_hash == digest), None)

    # ---- what an API answer may show -------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """``text`` without the server's paths (a file in the registry is named by its version) and without
        onnxruntime's own message (the log has it)."""
        for root in sorted({str(self.root.resolve()), str(self.root)}, key=len, reverse=True):
            text = re.sub(re.escape(root) + r"/versions/([^/\s]+)/model\.onnx", r"model version \1", text)
            text = re.sub(re.escape(root) + r"/\.staging-([^/\s]+)/model\.onnx", r"the uploaded model \1", text)
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
        """
        card, digest = _inspect_model_bytes(data, source)
        file_sha = hashlib.sha256(data).hexdigest()
        version = check_version(card.version, where=f" (from the card of {source}; re-export with --version)")
        with self._locked():
            if (self.versions_dir / version / "info.json").exists():
                existing = self._entry(version)
                if existing.file_sha256 == file_sha:
                    return existing, False
                raise RegistryError(
                    f"version {version} is already registered with a different file "
                    f"(sha256 {existing.file_sha256[:12]}, this file {file_sha[:12]}); "
                    "export the new model with a new version"
                )
            staging = self.root / f".staging-{version}"
            shutil.rmtree(staging, ignore_errors=True)
            make_dirs_durably(staging)
            write_durably(staging / "model.onnx", data)
            try:
                if validate is not None:
                    validate(staging / "model.onnx")
            except AndonError as exc:  # it names the staged file: name what the caller gave instead
                shutil.rmtree(staging, ignore_errors=True)
                staged = [str(staging / "model.onnx"), str((staging / "model.onnx").resolve())]
                raise _reworded(exc, lambda text: _replace_all(text, staged, source)) from None
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            info = {
                "name": card.name,
                "version": version,
                "content_hash": digest,
                "file_sha256": file_sha,
                "size_bytes": len(data),
                "added_at": _now(),
                "source": source,
            }
            write_durably(staging / "info.json", json.dumps(info, indent=2).encode())
            make_dirs_durably(self.versions_dir)
            staging.rename(self.versions_dir / version)
            fsync_dir(self.versions_dir)
            fsync_dir(self.root)
            self._write_change(lambda s: None, action="add", version=version)
        return self._entry(version), True

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
        before_write: Callable[[str | None, RegistryState], None] | None = None,
        after_write: Callable[[str | None, RegistryState], None] | None = None,
    ) -> tuple[str | None, RegistryState]:
        """Make ``line_id`` run ``product`` (None: the default); returns (the product it ran before, the state).

        ``before_write(before, state)`` and ``after_write(before, state)`` run under the registry's lock, only
        when the line's product changes: the service records the switch there, and keeps it in force in its own
        process before another process can change the state again.
        """
        check_line(line_id)
        if product is not None:
            check_product(product)
        with self._locked():
            state = self.state()
            if product is not None:
                state.product_version(product)
            before = state.lines.get(line_id)
            if before == product:
                return before, state

            state = self._write_change(
                lambda s: _set_line(s, line_id, product),
                action="select",
                version=None,
                product=product,
                line=line_id,
                before_write=None if before_write is None else lambda s: before_write(before, s),
            )
            if after_write is not None:
                try:
                    after_write(before, state)
                except BaseException:  # the switch could not be recorded: undo it, then say so
                    self._write_change(
                        lambda s: _set_line(s, line_id, before),
                        action="select",
                        version=None,
                        product=before,
                        line=line_id,
                    )
                    raise
            return before, state

    def _update(
        self, change: Callable[[RegistryState], None], *, action: str, version: str | None, product: str | None = None
    ) -> RegistryState:
        with self._locked():
            return self._write_change(change, action=action, version=version, product=product)

    def _write_change(
        self,
        change: Callable[[RegistryState], None],
        *,
        action: str,
        version: str | None,
        product: str | None = None,
        line: str | None = None,
        before_write: Callable[[RegistryState], None] | None = None,
    ) -> RegistryState:
        """Apply ``change`` to the state and write it; the caller holds the lock."""
        state = self.state()
        before = state.pointers()
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
            state.history.append(event)
            if before_write is not None:
                before_write(state)
            make_dirs_durably(self.root)
            write_durably(self.state_path, state.to_json().encode())
        return state

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        make_dirs_durably(self.root)
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


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
