"""Frames in, durable records out: the path every posted frame takes.

1. check: the caller may post for this camera, the camera is known;
2. idempotency: a retried (camera, Idempotency-Key) returns the stored answer; different bytes -> 422. This
   comes before any inference slot is taken: a replay costs a lookup, so it never gets 503 for a full queue;
3. intake: the header is read and the structure checked (``decoding.probe``); a frame that would decode to
   over ``max_decode_ratio`` x the model input's pixels is refused (413) before any pixel is decoded; the
   frame's decoded bytes are reserved in the admission's memory budget (503 + Retry-After when full); bytes
   after the image's end (a ZIP appended to a JPEG) are dropped: only the image is inspected and stored;
4. inference on the bounded pool (``Admission``) with the model snapshot taken at the start;
5. storage: the image (and its map: ``InspectionResult.display_map``, the anomaly map where the anomaly
   score flagged the frame, else the class heatmap) of every non-pass frame and of a sample of passes is
   written durably, then the record is committed; only then does the caller answer 2xx. A failure at any
   step writes nothing (images already written for the request are removed).

A batch is all-or-nothing: every frame is checked (decoded) before any is stored, and all records go in
one transaction.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError
from sqlalchemy import select, tuple_
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from andon.errors import ImageDecodeError, StorageError
from andon.inspect.decoding import ImageHeader, check_cost, decode_cost, probe
from andon.inspect.inspector import Inspector
from andon.inspect.result import InspectionResult
from andon.service.admission import Admission, Reservation
from andon.service.auth import KeyDirectory, Principal
from andon.service.db import writing
from andon.service.errors import (
    IdempotencyConflictError,
    NoModelError,
    OverloadedError,
    PermissionDeniedError,
    UnknownCameraError,
)
from andon.service.line import Line
from andon.service.line.refusals import NO_MODEL, OVERLOAD, Refusal
from andon.service.metrics import Metrics
from andon.service.runtime import ModelRuntime
from andon.service.schemas import FrameMeta, InspectionOut
from andon.service.settings import Settings
from andon.service.storage import ImageStore
from andon.service.tables import REVIEW_NOT_REQUIRED, REVIEW_UNREVIEWED, Inspection, ShadowResult, new_id, utcnow

log = logging.getLogger("andon.service")

_EXT = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "TIFF": "tif"}


@dataclass
class IncomingFrame:
    data: bytes
    meta: FrameMeta
    idempotency_key: str | None
    _sha256: str | None = None

    @property
    def sha256(self) -> str:
        """Hex digest of the bytes; first computed off the event loop (``process`` does it in a thread)."""
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self.data).hexdigest()
        return self._sha256


@dataclass
class _Done:
    frame: IncomingFrame
    header: ImageHeader
    result: InspectionResult
    timings: dict[str, float]
    #: the product (SKU) it was judged under; None: the default
    product: str | None = None


@dataclass
class Outcome:
    """What the caller answers with, plus follow-up work to run after the answer (shadow scoring)."""

    items: list[InspectionOut]
    replayed: list[bool]
    after: list[Callable]


class _Slots:
    """The inference slots one request holds: taken up to a count, given back once (``free``)."""

    def __init__(self, admission: Admission, held: int) -> None:
        self.admission, self.held = admission, held

    def take(self, n: int) -> None:
        """Hold ``n`` slots (the ones already held count), or raise ``OverloadedError`` (503)."""
        if n > self.held:
            self.held += self.admission.acquire(n - self.held)

    def free(self) -> None:
        if self.held:
            self.admission.release(self.held)
            self.held = 0


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        runtime: ModelRuntime,
        admission: Admission,
        store: ImageStore,
        sessions: Callable[[], Session],
        metrics: Metrics,
        keys: KeyDirectory,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.admission = admission
        self.store = store
        self.sessions = sessions
        self.metrics = metrics
        self.keys = keys
        self.shadow_skipped = 0
        self.line: Line | None = None  # the line's outbox (andon.service.line), when sinks are configured

    # ---- checks ----------------------------------------------------------------------------------------
    def check_camera(self, principal: Principal, camera_id: str) -> None:
        if principal.role == "camera" and principal.camera_id != camera_id:
            raise PermissionDeniedError(
                f"this key belongs to camera {principal.camera_id!r}; it may not post frames for camera {camera_id!r}"
            )
        known = set(self.settings.cameras) | set(self.keys.camera_ids)
        if known and camera_id not in known:
            raise UnknownCameraError(f"unknown camera {camera_id!r}; known cameras: {', '.join(sorted(known))}")

    # ---- the path --------------------------------------------------------------------------------------
    async def process(
        self,
        frames: list[IncomingFrame],
        principal: Principal,
        *,
        heatmap: bool = False,
        started: float | None = None,
        admitted: int | None = None,
    ) -> Outcome:
        """Inspect and store ``frames``; all or nothing.

        ``admitted``: inference slots the caller took for them and hands over (default: none). Frames that are
        not replays of stored ones get the missing slots here, after the idempotency lookup. Every slot is given
        back as soon as inference returns (or on any error): a slot bounds the frames waiting for or in
        inference, so a slow commit or store (a WAL checkpoint, an fsync) does not refuse new frames while the
        inference threads are idle. What waits for storage is bounded by the memory budget (the bodies).
        """
        started = time.perf_counter() if started is None else started
        slots = _Slots(self.admission, admitted or 0)
        try:
            return await self._process(frames, principal, slots, heatmap=heatmap, started=started)
        except (NoModelError, OverloadedError) as exc:
            self.refuse_on_line(principal, [f.meta for f in frames], exc, started)  # 503: the line gets reject
            raise
        finally:
            slots.free()

    # ---- frames refused with 503: a reject verdict on the line (line/refusals.py) ---------------------------
    def refuse_on_line(self, principal: Principal, metas: list[FrameMeta], exc: Exception, started: float) -> None:
        """Frames refused with 503 (``exc``: the service overloaded, or no model) that name a part id: queued as
        reject verdicts for the line sinks. Never blocks, reads no image; frames ``principal`` may not post for
        their camera are skipped."""
        if self.line is None:
            return
        reason = NO_MODEL if isinstance(exc, NoModelError) else OVERLOAD
        active = self.runtime.snapshot().active
        version = active.model_version if active is not None else ""
        refusals = []
        for meta in metas:
            if not meta.part_id:
                continue
            try:
                self.check_camera(principal, meta.camera_id)
            except (PermissionDeniedError, UnknownCameraError):
                continue
            refusals.append(Refusal(meta.line_id, meta.camera_id, meta.part_id, meta.serial, reason, started, version))
        if refusals:
            self.line.refuse(refusals)

    def refuse_query(self, principal: Principal, query: dict, exc: Exception, started: float) -> None:
        """``refuse_on_line`` for a frame refused before its body was read: the one its query parameters name."""
        if self.line is None:
            return
        try:
            meta = FrameMeta.model_validate({k: v for k, v in query.items() if v not in (None, "")})
        except ValidationError:
            return  # no valid line, camera and part id: nothing the line could match
        self.refuse_on_line(principal, [meta], exc, started)

    async def _process(
        self, frames: list[IncomingFrame], principal: Principal, slots: _Slots, *, heatmap: bool, started: float
    ) -> Outcome:
        if self.keys.cameras_stale:
            await run_in_threadpool(self.keys.refresh_cameras)  # a database read: never on the event loop
        for frame in frames:
            self.check_camera(principal, frame.meta.camera_id)
        _check_unique_keys(frames)
        keyed = any(f.idempotency_key for f in frames)
        for _attempt in range(3):
            stored = await run_in_threadpool(self._lookup, frames) if keyed else [None] * len(frames)
            todo = [f for f, row in zip(frames, stored) if row is None]
            if not todo:
                return self._outcome(stored, [True] * len(frames), heatmap, [])
            models = self.runtime.snapshot()
            judged = [models.judge(f.meta.line_id, f.meta.product) for f in todo]  # one snapshot: no half switch
            if any(inspector is None for _, inspector in judged):
                raise NoModelError(
                    self.runtime.last_error or "no active model: add one with 'andon models add' and promote it"
                )
            slots.take(len(todo))
            try:
                inspectors = [inspector for _, inspector in judged]
                headers = await run_in_threadpool(self._intake, todo, inspectors)
                cost = sum(decode_cost(h, m.card.preprocess.input_size) for h, m in zip(headers, inspectors))
                what = "this frame" if len(todo) == 1 else f"these {len(todo)} frames"
                memory: Reservation = self.admission.reserve(cost, f"decoding {what}")
                try:
                    done = await self._judge(judged, todo, headers, large=memory.large)
                finally:
                    self.admission.unreserve(memory)  # the pixels are gone once inference returns
            finally:
                slots.free()  # inference is over: storage waits without holding a slot
            rows = await run_in_threadpool(self._persist, done, started)
            if rows is None:
                continue  # lost an idempotency race to a concurrent retry: answer with the winner's record
            fresh = iter(rows)
            replayed = [row is not None for row in stored]
            merged = [row if row is not None else next(fresh) for row in stored]
            after = [
                self._shadow_job(models.shadow, d, row)
                for d, row in zip(done, rows)
                if models.shadow is not None and d.product is None  # the shadow stands beside the default model
            ]
            heat = {row.id: d.result.display_map for d, row in zip(done, rows)}
            return self._outcome(merged, replayed, heatmap, after, heat)
        raise StorageError("could not store the frame after 3 attempts (concurrent retries); retry")

    def _lookup(self, frames: list[IncomingFrame]) -> list[Inspection | None]:
        """Stored records for frames whose (camera, key) was seen before; conflict if the bytes differ."""
        for f in frames:
            f.sha256  # noqa: B018 - hash here, in a worker thread, not on the event loop
        wanted = [(f.meta.camera_id, f.idempotency_key) for f in frames if f.idempotency_key]
        if not wanted:
            return [None] * len(frames)
        with self.sessions() as session:
            rows = session.scalars(
                select(Inspection).where(tuple_(Inspection.camera_id, Inspection.idempotency_key).in_(wanted))
            ).all()
        found = {(r.camera_id, r.idempotency_key): r for r in rows}
        out: list[Inspection | None] = []
        for f in frames:
            row = found.get((f.meta.camera_id, f.idempotency_key)) if f.idempotency_key else None
            if row is not None and row.body_sha256 != f.sha256:
                raise IdempotencyConflictError(
                    f"Idempotency-Key {f.idempotency_key!r} of camera {f.meta.camera_id!r} was used for a "
                    f"different frame (inspection {row.id}); use a new key for a new frame"
                )
            out.append(row)
        return out

    def _intake(self, frames: list[IncomingFrame], inspectors: Inspector | list[Inspector]) -> list[ImageHeader]:
        """Header and structure of each frame, its cost checked against its model; trailing data dropped.

        Runs in a worker thread: the structure walk reads the whole file (CRCs, scan data).
        """
        settings = self.settings
        if isinstance(inspectors, Inspector):
            inspectors = [inspectors] * len(frames)
        headers = []
        for i, (f, inspector) in enumerate(zip(frames, inspectors)):
            target = inspector.card.preprocess.input_size
            f.sha256  # noqa: B018 - the body's hash (idempotency) before the trailing data goes
            try:
                header = probe(f.data, max_pixels=settings.max_pixels, allowed_formats=settings.allowed_formats)
                check_cost(header, target, settings.max_decode_ratio, max_pixels_per_byte=settings.max_pixels_per_byte)
            except ImageDecodeError as exc:
                raise _frame_error(exc, i, len(frames)) from None
            if header.end is not None and header.end < len(f.data):
                log.info(
                    "camera %s: dropped %d bytes after the end of a %d-byte %s frame",
                    f.meta.camera_id,
                    len(f.data) - header.end,
                    header.end,
                    header.format,
                )
                f.data = f.data[: header.end]
            headers.append(header)
        return headers

    async def _judge(
        self,
        judged: list[tuple[str | None, Inspector]],
        frames: list[IncomingFrame],
        headers: list[ImageHeader],
        *,
        large: bool = False,
    ) -> list[_Done]:
        """Each frame through the model of its product (frames of one product in one batch run), in order."""
        groups: dict[int, list[int]] = {}
        for i, (_, inspector) in enumerate(judged):
            groups.setdefault(id(inspector), []).append(i)
        done: list[_Done | None] = [None] * len(frames)
        for indices in groups.values():
            inspector = judged[indices[0]][1]
            chunk = [frames[i] for i in indices], [headers[i] for i in indices]
            part = await self._infer(inspector, *chunk, large=large)
            for i, d in zip(indices, part):
                d.product = judged[i][0]
                done[i] = d
        return done  # type: ignore[return-value]

    async def _infer(
        self, inspector: Inspector, frames: list[IncomingFrame], headers: list[ImageHeader], *, large: bool = False
    ) -> list[_Done]:
        want_heat = inspector.has_maps  # a class heatmap, an anomaly map, or both

        def work() -> list[tuple[ImageHeader, InspectionResult]]:
            try:
                results = inspector.inspect_batch([f.data for f in frames], heatmap=want_heat)
            except ImageDecodeError as exc:
                raise _frame_error(exc, None, len(frames)) from None
            return list(zip(headers, results))  # type: ignore[arg-type]

        pairs, queue_ms = await self.admission.run(work, large=large)
        done = []
        for f, (header, result) in zip(frames, pairs):
            timings = {k: round(v, 3) for k, v in result.timings_ms.items() if k != "total"}
            timings["queue"] = round(queue_ms, 3)
            done.append(_Done(f, header, result, timings))
        return done

    def _keep_image(self, d: _Done) -> bool:
        if d.result.decision != "pass":
            return True
        # deterministic in the bytes: a retried pass is sampled the same way
        return int(d.frame.sha256[:8], 16) / 0x1_0000_0000 < self.settings.pass_sample_rate

    def _persist(self, done: list[_Done], started: float) -> list[Inspection] | None:
        """Images first (durably), then the records in one transaction; None on an idempotency race."""
        written: list[str] = []
        rows: list[Inspection] = []
        now = utcnow()
        committing = False
        try:
            for d in done:
                t0 = time.perf_counter()
                row = _row(d, new_id(), now)
                if self._keep_image(d):
                    row.image_key = f"{now:%Y/%m/%d}/{row.id}.{_EXT.get(d.header.format, 'img')}"
                    self.store.put(row.image_key, d.frame.data)
                    written.append(row.image_key)
                    shown = d.result.display_map  # the anomaly map where the anomaly score flagged the frame
                    if shown is not None:
                        row.heatmap_key = f"{now:%Y/%m/%d}/{row.id}.heatmap.npy"
                        self.store.put(row.heatmap_key, encode_heatmap(shown))
                        written.append(row.heatmap_key)
                d.timings["storage"] = round((time.perf_counter() - t0) * 1000.0, 3)
                d.timings["total"] = round((time.perf_counter() - started) * 1000.0, 3)
                row.timings_ms = dict(d.timings)
                rows.append(row)
            t0 = time.perf_counter()
            with writing(self.sessions) as session:
                session.add_all(rows)
                if self.line is not None:
                    self.line.record(session, rows, started)  # the line's outbox rows commit with the records
                session.flush()  # the INSERTs: an error here is certain, nothing was committed
                committing = True
                session.commit()
            commit_ms = (time.perf_counter() - t0) * 1000.0
        except IntegrityError:
            self._forget(written)
            return None
        except SQLAlchemyError as exc:
            if committing and _commit_may_have_landed(exc):
                # A commit that failed may still reach the disk (a WAL whose fsync failed is replayed after a
                # power cut): keep its images, so that a record never comes back without them. If the record
                # did not survive, the start-up sweep (or retention after orphan_grace_s) removes them.
                log.error("database commit failed (its %d image files are kept for the sweeps): %s", len(written), exc)
            else:
                self._forget(written)
                log.error("database write failed: %s", exc)
            raise StorageError("the database did not take the record; nothing was stored; retry") from None
        except BaseException:
            self._forget(written)
            raise
        if self.line is not None:
            self.line.notify()
        for d, row in zip(done, rows):
            self.metrics.decisions.labels(line_id=row.line_id, camera_id=row.camera_id, decision=row.decision).inc()
            self.metrics.observe_stages({**d.timings, "storage": d.timings["storage"] + commit_ms / len(rows)})
        return rows

    def _forget(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.store.delete(key)
            except Exception:  # noqa: BLE001 - best effort; retention sweeps orphans
                log.warning("could not remove %s after a failed write", key)

    def _outcome(
        self,
        rows: list[Inspection],
        replayed: list[bool],
        heatmap: bool,
        after: list[Callable],
        heat: dict[str, np.ndarray | None] | None = None,
    ) -> Outcome:
        items = []
        for row in rows:
            grid = None
            if heatmap:
                arr = (heat or {}).get(row.id)
                if arr is None and row.heatmap_key:
                    arr = self.load_heatmap(row.heatmap_key)
                grid = None if arr is None else np.round(arr.astype(np.float64), 4).tolist()
            items.append(InspectionOut.from_row(row, grid))
        return Outcome(items, replayed, after)

    def load_heatmap(self, key: str) -> np.ndarray | None:
        try:
            return decode_heatmap(self.store.get(key))
        except Exception:  # noqa: BLE001 - pruned or unreadable: the answer simply has no heatmap
            return None

    # ---- shadow ----------------------------------------------------------------------------------------
    def _shadow_job(self, shadow: Inspector, d: _Done, row: Inspection) -> Callable:
        async def job() -> None:
            version = shadow.model_version
            target = shadow.card.preprocess.input_size
            memory = None
            try:
                check_cost(
                    d.header,
                    target,
                    self.settings.max_decode_ratio,
                    max_pixels_per_byte=self.settings.max_pixels_per_byte,
                )
                memory = self.admission.reserve(decode_cost(d.header, target), "shadow scoring")
            except (ImageDecodeError, OverloadedError):
                pass
            if (
                memory is None
                or self.admission.load > self.settings.shadow_max_load
                or not self.admission.try_acquire(1)
            ):
                if memory is not None:
                    self.admission.unreserve(memory)
                self.shadow_skipped += 1
                self.metrics.shadow.labels(shadow_version=version, outcome="skipped").inc()
                return
            try:
                result, _ = await self.admission.run(lambda: shadow.inspect(d.frame.data), large=memory.large)
            except Exception as exc:  # noqa: BLE001 - a shadow failure must never touch the verdict path
                log.warning("shadow model %s failed on %s: %s", version, row.id, exc)
                self.metrics.shadow.labels(shadow_version=version, outcome="error").inc()
                return
            finally:
                self.admission.release(1)
                self.admission.unreserve(memory)
            agree = result.decision == row.decision
            self.metrics.shadow.labels(shadow_version=version, outcome="agree" if agree else "disagree").inc()
            await run_in_threadpool(self._store_shadow, row, result)

        return job

    def _store_shadow(self, row: Inspection, result: InspectionResult) -> None:
        try:
            with self.sessions() as session:
                session.add(
                    ShadowResult(
                        inspection_id=row.id,
                        created_at=utcnow(),
                        model_version=result.model_version,
                        model_hash=result.model_hash,
                        label=result.label,
                        decision=result.decision,
                        defect_score=result.defect_score,
                        active_decision=row.decision,
                        agree_decision=result.decision == row.decision,
                        agree_label=result.label == row.label,
                    )
                )
                session.commit()
        except SQLAlchemyError as exc:
            log.warning("could not store the shadow result for %s: %s", row.id, exc)


def _row(d: _Done, inspection_id: str, now: dt.datetime) -> Inspection:
    r, meta = d.result, d.frame.meta
    return Inspection(
        id=inspection_id,
        created_at=now,
        captured_at=meta.captured_at,
        line_id=meta.line_id,
        camera_id=meta.camera_id,
        part_id=meta.part_id,
        serial=meta.serial,
        label=r.label,
        decision=r.decision,
        defect_score=float(r.defect_score),
        scores={k: float(v) for k, v in r.scores.items()},
        reasons=list(r.reasons),
        model_version=r.model_version,
        model_hash=r.model_hash,
        image_format=d.header.format,
        image_width=int(r.image_size[1]),
        image_height=int(r.image_size[0]),
        image_bytes=len(d.frame.data),
        body_sha256=d.frame.sha256,
        image_key=None,
        heatmap_key=None,
        review_status=REVIEW_NOT_REQUIRED if r.decision == "pass" else REVIEW_UNREVIEWED,
        idempotency_key=d.frame.idempotency_key,
        timings_ms={},
        reason=r.reason or None,
        anomaly_score=None if r.anomaly_score is None else float(r.anomaly_score),
        product=d.product,
        **{k: (r.quality or {}).get(k) for k in ("brightness", "contrast", "focus")},
    )


def _check_unique_keys(frames: list[IncomingFrame]) -> None:
    seen = set()
    for f in frames:
        if f.idempotency_key:
            key = (f.meta.camera_id, f.idempotency_key)
            if key in seen:
                raise IdempotencyConflictError(
                    f"Idempotency-Key {f.idempotency_key!r} appears twice in the batch for camera {f.meta.camera_id!r}"
                )
            seen.add(key)


def _frame_error(exc: ImageDecodeError, index: int | None, count: int) -> ImageDecodeError:
    if count == 1 or index is None:
        return exc
    return type(exc)(f"frame {index}: {exc.message}")


def encode_heatmap(heatmap: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(heatmap, dtype=np.float16), allow_pickle=False)
    return buf.getvalue()


def decode_heatmap(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)


async def run_after(jobs: list[Callable]) -> None:
    """Run follow-up jobs (BackgroundTasks calls this after the answer is sent)."""
    await asyncio.gather(*(job() for job in jobs), return_exceptions=True)


#: SQLite's extended codes of a failed fsync (SQLITE_IOERR_FSYNC, SQLITE_IOERR_DIR_FSYNC): everything of the
#: transaction was written, only its durability is unknown
_SQLITE_FSYNC_ERRORS = frozenset({10 | (4 << 8), 10 | (5 << 8)})


def _commit_may_have_landed(exc: SQLAlchemyError) -> bool:
    """Whether a failed COMMIT may still be on disk. SQLite says why it failed: only a failed fsync leaves a
    complete transaction behind (a write error or a full disk leaves no commit frame). Other databases cannot
    tell (a connection lost during COMMIT), so their commit errors count as possibly landed."""
    code = getattr(getattr(exc, "orig", None), "sqlite_errorcode", None)
    return code in _SQLITE_FSYNC_ERRORS if code is not None else True
