"""The inspector: one andon ONNX file in, typed verdicts out. No torch.

``Inspector.load(path)`` refuses, each with its own message, every file that is not a self-describing andon
model: a missing file, something that is not ONNX (an image, text), a PyTorch checkpoint or other pickle,
a model with external data, a missing or invalid card, a graph changed after export (content hash), and a
graph whose input/output signature disagrees with its card. It then opens an onnxruntime session tuned for
the machine (``andon.inspect.session``) and runs one warm-up batch, so the first real frame is not slow and
a graph that does not output probabilities is caught at load, not on the line.

``inspect(frame)`` decodes, preprocesses (``Preprocessor``, the one preprocessing path), runs the network and
decides (``andon.inspect.decision``); ``inspect_batch(frames)`` does the same with one onnxruntime call.
An ``Inspector`` is immutable after loading and safe to share between threads.
"""

from __future__ import annotations

import copy
import io
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from andon.errors import AndonError, ImageDecodeError, ModelCardError, ModelFileError, ModelRuntimeError
from andon.inspect import decoding
from andon.inspect.card import ModelCard, Thresholds
from andon.inspect.decision import DecisionPolicy, Verdicts
from andon.inspect.onnxfile import content_hash, read_card
from andon.inspect.outputs import ModelOutputs, output_spec
from andon.inspect.preprocess import Frame, Preprocessor
from andon.inspect.quality import frame_quality
from andon.inspect.result import InspectionResult
from andon.inspect.session import create_session

_EXPORT_HINT = "export a training run with 'andon export RUN'"


class Inspector:
    """A loaded, validated andon model and its decision thresholds."""

    def __init__(
        self, *, path: Path, card: ModelCard, session: object, preprocessor: Preprocessor, model_hash: str
    ) -> None:
        self.path = path
        self.card = card
        self.model_hash = model_hash
        self.model_version = card.version
        self.preprocessor = preprocessor
        self._session = session
        self._input = card.input_name
        self.policy = DecisionPolicy.from_card(card)
        #: outputs every call runs (what the decision needs) and those run only when maps are asked for
        self._always = [k for k in card.output_names if not output_spec(k).is_map]
        self._maps = [k for k in card.output_names if output_spec(k).is_map]

    # -- loading ---------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        threads: int | None = None,
        max_pixels: int = decoding.DEFAULT_MAX_PIXELS,
        allowed_formats: frozenset[str] = decoding.SUPPORTED_FORMATS,
        warmup: bool = True,
    ) -> Inspector:
        """Validate ``path`` (see the module docstring) and open it for inference."""
        path = Path(path)
        if not path.exists():
            raise ModelFileError(f"model file {path} does not exist")
        if not path.is_file():
            raise ModelFileError(f"model path {path} is not a file (a run folder? {_EXPORT_HINT})")
        return cls.from_bytes(
            path.read_bytes(),
            source=path,
            threads=threads,
            max_pixels=max_pixels,
            allowed_formats=allowed_formats,
            warmup=warmup,
        )

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        source: str | Path = "<bytes>",
        threads: int | None = None,
        max_pixels: int = decoding.DEFAULT_MAX_PIXELS,
        allowed_formats: frozenset[str] = decoding.SUPPORTED_FORMATS,
        warmup: bool = True,
    ) -> Inspector:
        """Like ``load``, for a model already in memory (an upload, say); ``source`` names it in errors."""
        model = parse_model(data, source)
        refuse_external_data(model, source)
        card = _read_card(model, source)
        model_hash = _verify_hash(model, card, source)
        check_signature(model, card, source)
        try:
            session = create_session(data, threads)
        except Exception as exc:  # onnxruntime raises its own exception types, one per failure kind
            detail = _first_line(exc)
            raise ModelRuntimeError(f"onnxruntime cannot load {source}: {detail}", detail=detail) from None
        inspector = cls(
            path=Path(str(source)),
            card=card,
            session=session,
            model_hash=model_hash,
            preprocessor=Preprocessor(card.preprocess, max_pixels=max_pixels, allowed_formats=allowed_formats),
        )
        if warmup:
            inspector._warm_up(source)
        return inspector

    def _warm_up(self, source: str | Path) -> None:
        """One batch through the whole path; also proves every output has its declared shape and range."""
        h, w = self.card.preprocess.input_size
        tensor = self.preprocessor(np.full((2 * h, 2 * w, 3), 128, dtype=np.uint8))[None]  # resize path too
        outputs = self._run(tensor, maps=True)
        k = len(self.card.classes)
        names = self.card.output_names
        for key, value in outputs.values.items():
            dims = output_spec(key).dims
            fits = value.ndim == len(dims) and value.shape[0] == 1 and ("K" not in dims or value.shape[1] == k)
            if not fits or not np.all(np.isfinite(value)):
                raise ModelFileError(
                    f"{source}: output '{names[key]}' gave {value.shape} "
                    f"{'' if fits else '(wrong shape) '}with values "
                    f"{'finite' if np.all(np.isfinite(value)) else 'not all finite'}; expected "
                    f"({', '.join(dims)}) with N=1, K={k}, finite"
                )
        probs = outputs.probs
        if not np.all(probs >= -1e-4) or abs(float(probs.sum()) - 1.0) > 1e-3:
            raise ModelFileError(
                f"{source}: output '{names['probabilities']}' is not a probability vector (sums to "
                f"{float(probs.sum()):.4f}, min {float(probs.min()):.4f}); the graph must end with a softmax over {k} "
                "classes"
            )
        self.policy.decide(outputs)  # the decision finds every score it needs

    # -- thresholds ------------------------------------------------------------------------------------

    @property
    def thresholds(self) -> Thresholds:
        return self.card.thresholds

    def with_thresholds(self, thresholds: Thresholds) -> Inspector:
        """A copy deciding with other thresholds; shares the (expensive) onnxruntime session."""
        other = copy.copy(self)
        other.card = self.card.replace(thresholds=thresholds.model_dump())
        other.policy = DecisionPolicy.from_card(other.card)
        return other

    @property
    def has_maps(self) -> bool:
        """Whether the model outputs a map (class heatmap or anomaly map) to show where the defect is."""
        return bool(self._maps)

    # -- inference -------------------------------------------------------------------------------------

    def predict(self, tensors: np.ndarray, *, maps: bool = False) -> ModelOutputs:
        """Bare forward pass: float32 Nx3xHxW preprocessed tensors -> the model's outputs (maps when asked)."""
        tensors = np.ascontiguousarray(tensors, dtype=np.float32)
        if tensors.ndim == 3:
            tensors = tensors[None]
        h, w = self.card.preprocess.input_size
        if tensors.ndim != 4 or tensors.shape[1:] != (3, h, w):
            raise ImageDecodeError(f"tensors of shape {tensors.shape} do not fit the model input (N, 3, {h}, {w})")
        if len(tensors) == 0:
            return ModelOutputs(
                {
                    k: np.zeros((0, len(self.card.classes)) if k == "probabilities" else (0,), dtype=np.float32)
                    for k in self._always
                }
            )
        return self._run(tensors, maps=maps)

    def predict_probs(self, tensors: np.ndarray) -> np.ndarray:
        """Bare forward pass: float32 Nx3xHxW preprocessed tensors -> NxK class probabilities."""
        return self.predict(tensors).probs

    def inspect(self, frame: Frame, *, heatmap: bool = False) -> InspectionResult:
        """The verdict on one frame (image bytes, or a uint8/uint16 grey, RGB or RGBA array)."""
        return self.inspect_batch([frame], heatmap=heatmap)[0]  # type: ignore[return-value]

    def inspect_batch(
        self, frames: Sequence[Frame], *, heatmap: bool = False, on_error: Literal["raise", "return"] = "raise"
    ) -> list[InspectionResult | AndonError]:
        """Verdicts for many frames with one onnxruntime call.

        A frame that cannot be decoded raises its ``ImageDecodeError``; with ``on_error="return"`` the error
        takes that frame's place in the list instead and the other frames are still inspected.
        """
        self._check_heatmap(heatmap)
        prepared: list[_Prepared | AndonError] = []
        for frame in frames:
            try:
                prepared.append(self._prepare(frame))
            except ImageDecodeError as exc:
                if on_error == "raise":
                    raise
                prepared.append(exc)
        good = [p for p in prepared if isinstance(p, _Prepared)]
        if not good:
            return list(prepared)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        batch = good[0].tensor[None] if len(good) == 1 else np.stack([p.tensor for p in good])  # no copy for one
        outputs = self._run(batch, maps=heatmap)
        infer_ms = (time.perf_counter() - t0) * 1000.0 / len(good)  # the batch call, amortised per frame
        verdicts = self.policy.decide(outputs)
        results: list[InspectionResult | AndonError] = []
        row = 0
        for p in prepared:
            if not isinstance(p, _Prepared):
                results.append(p)
                continue
            results.append(self._result(p, outputs, verdicts, row, infer_ms))
            row += 1
        return results

    # -- internals -------------------------------------------------------------------------------------

    def _check_heatmap(self, heatmap: bool) -> None:
        if heatmap and not self._maps:
            raise ModelCardError(
                f"model {self.path.name} has no heatmap or anomaly map output (card output_names "
                f"{self.card.output_names})"
            )

    def _prepare(self, frame: Frame) -> _Prepared:
        t0 = time.perf_counter()
        pixels, header = self.preprocessor.decode_with_header(frame)
        size = _original_size(header, pixels)
        t1 = time.perf_counter()
        resized = self.preprocessor.resize(pixels)
        tensor = self.preprocessor.to_tensor(resized)
        quality = frame_quality(pixels, resized).as_dict()  # under a millisecond; the dashboard's lens/lamp watch
        t2 = time.perf_counter()
        return _Prepared(tensor, size, (t1 - t0) * 1000.0, (t2 - t1) * 1000.0, quality)

    def _run(self, tensors: np.ndarray, *, maps: bool) -> ModelOutputs:
        keys = self._always + (self._maps if maps else [])
        names = [self.card.output_names[k] for k in keys]
        arrays = self._session.run(names, {self._input: tensors})  # type: ignore[attr-defined]
        return ModelOutputs.from_run(keys, arrays)

    def _result(
        self, p: _Prepared, outputs: ModelOutputs, verdicts: Verdicts, row: int, infer_ms: float
    ) -> InspectionResult:
        classes = self.card.classes
        probs = outputs.probs[row]
        timings = {"decode": p.decode_ms, "preprocess": p.preprocess_ms, "infer": infer_ms}
        timings["total"] = sum(timings.values())
        anomaly = outputs.get("anomaly_score")
        heat, amap = outputs.get("heatmap"), outputs.get("anomaly_map")
        return InspectionResult(
            label=classes[int(np.argmax(probs))],
            scores={c: float(v) for c, v in zip(classes, probs)},
            defect_score=float(verdicts.scores[verdicts.signals[0].name][row]),
            decision=verdicts.decision(row),
            reasons=verdicts.reasons(row),
            reason=verdicts.reason(row),
            anomaly_score=None if anomaly is None else float(anomaly[row]),
            anomaly_map=None if amap is None else amap[row],
            heatmap=None if heat is None else heat[row],
            model_version=self.model_version,
            model_hash=self.model_hash,
            timings_ms=timings,
            image_size=p.size,
            quality=p.quality,
        )

    def __repr__(self) -> str:
        t = self.card.thresholds.defect
        return (
            f"Inspector({self.path.name!r}, classes={self.card.classes}, version={self.model_version!r}, "
            f"pass_below={t.pass_below}, reject_at={t.reject_at})"
        )


class _Prepared:
    __slots__ = ("tensor", "size", "decode_ms", "preprocess_ms", "quality")

    def __init__(
        self,
        tensor: np.ndarray,
        size: tuple[int, int],
        decode_ms: float,
        preprocess_ms: float,
        quality: dict[str, float] | None = None,
    ) -> None:
        self.tensor, self.size, self.decode_ms, self.preprocess_ms = tensor, size, decode_ms, preprocess_ms
        self.quality = quality


def _original_size(header: decoding.ImageHeader | None, pixels: np.ndarray) -> tuple[int, int]:
    """(height, width) of the frame itself, even when the JPEG decoder used a reduced scale.

    The header size is before EXIF rotation; the decoded pixels are after it, so the header's sides are
    swapped when the decoded orientation differs. A numpy frame (no header) is its own size.
    """
    h, w = int(pixels.shape[0]), int(pixels.shape[1])
    if header is None or (header.height, header.width) == (h, w):
        return h, w
    if h == w or (header.height > header.width) == (h > w):
        return header.height, header.width
    return header.width, header.height


# -- validation of model files (each refusal with its own message) --------------------------------------


def parse_model(data: bytes, source: str | Path) -> onnx.ModelProto:
    """Parse ONNX bytes, naming what the file is when it is not ONNX."""
    what = sniff_non_onnx(data)
    if what is not None:
        raise ModelFileError(f"{source} is {what}, not an ONNX model")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{source} is not an ONNX model: it does not parse ({_first_line(exc)})") from None
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.node) == 0 or not model.opset_import:
        raise ModelFileError(f"{source} is not an ONNX model: {len(data):,} bytes with no graph, IR version or opset")
    return model


_IMAGE_MAGIC = {
    b"\xff\xd8\xff": "a JPEG image",
    b"\x89PNG": "a PNG image",
    b"BM": "a BMP image",
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
    b"GIF8": "a GIF image",
}


def sniff_non_onnx(data: bytes) -> str | None:
    """What a file obviously is when it is not ONNX (a checkpoint, an image, text), else None."""
    if not data:
        return "empty (0 bytes)"
    if data[:1] == b"\x80" and len(data) > 1 and 2 <= data[1] <= 5:
        return f"a pickle (protocol {data[1]}); if it is a PyTorch checkpoint, {_EXPORT_HINT}"
    if data[:4] == b"PK\x03\x04":
        return _describe_zip(data)
    for magic, name in _IMAGE_MAGIC.items():
        if data.startswith(magic):
            return name
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text and sum(ch.isprintable() or ch in "\r\n\t" for ch in text) / len(text) > 0.95:
        return f"a text file (starting {text[:24]!r})"
    return None


def _describe_zip(data: bytes) -> str:
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except zipfile.BadZipFile:
        return "a damaged zip archive"
    if any(n.endswith("data.pkl") for n in names):
        return f"a PyTorch checkpoint (a zip with data.pkl); {_EXPORT_HINT}"
    return f"a zip archive ({len(names)} entries)"


def refuse_external_data(model: onnx.ModelProto, source: str | Path) -> None:
    """Refuse models whose weights live in other files: the .onnx alone must be the whole model."""
    for tensor in _all_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or any(e.key == "location" for e in tensor.external_data):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise ModelFileError(
                f"{source} stores tensor '{tensor.name}' as external data (in '{location}'); an andon model must be "
                "one self-contained file: re-export it, or merge it with onnx.load(..., load_external_data=True) "
                "and onnx.save(..., save_as_external_data=False)"
            )


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def _read_card(model: onnx.ModelProto, source: str | Path) -> ModelCard:
    try:
        return read_card(model, source=str(source))
    except ModelCardError as exc:
        if str(source) in exc.message:
            raise
        raise ModelCardError(f"{source}: {exc.message}") from None


def _verify_hash(model: onnx.ModelProto, card: ModelCard, source: str | Path) -> str:
    actual = content_hash(model)
    if not card.content_hash:
        raise ModelCardError(f"{source}: the card has no content_hash, so the graph cannot be verified; {_EXPORT_HINT}")
    if card.content_hash != actual:
        raise ModelFileError(
            f"{source}: the graph was changed after export: its content hash {actual[:12]} differs from the card's "
            f"{card.content_hash[:12]}; {_EXPORT_HINT} again instead of editing the graph"
        )
    return actual


def check_signature(model: onnx.ModelProto, card: ModelCard, source: str | Path) -> None:
    """The graph's input and outputs must be what the card says: image N,3,H,W float32 -> probs N,K."""
    graph = model.graph
    init = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init]
    h, w = card.preprocess.input_size
    want = f"one float32 input '{card.input_name}' of shape (N, 3, {h}, {w})"
    if len(inputs) != 1 or inputs[0].name != card.input_name:
        raise ModelFileError(f"{source}: wrong input signature: inputs {[i.name for i in inputs]}, expected {want}")
    dims = _dims(inputs[0])
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT or dims is None or len(dims) != 4:
        raise ModelFileError(
            f"{source}: wrong input signature: '{card.input_name}' is {_describe_value(inputs[0])}, expected {want}"
        )
    for axis, expected in ((1, 3), (2, h), (3, w)):
        if isinstance(dims[axis], int) and dims[axis] != expected:
            raise ModelFileError(
                f"{source}: wrong input signature: '{card.input_name}' has shape "
                f"{_shape_text(dims)} but the card says (N, 3, {h}, {w})"
            )
    _check_outputs(graph, card, source)


def _check_outputs(graph: onnx.GraphProto, card: ModelCard, source: str | Path) -> None:
    """Every output the card names is in the graph with its declared rank (and K classes where declared)."""
    outputs = {o.name: o for o in graph.output}
    k = len(card.classes)
    for key, name in card.output_names.items():
        spec = output_spec(key)
        want = "(" + ", ".join(str(k) if d == "K" else d for d in spec.dims) + ")"
        if name not in outputs:
            raise ModelFileError(f"{source}: wrong output signature: no {key} output '{name}' among {sorted(outputs)}")
        dims = _dims(outputs[name])
        if dims is None or len(dims) != spec.rank or ("K" in spec.dims and isinstance(dims[1], int) and dims[1] != k):
            raise ModelFileError(
                f"{source}: wrong output signature: '{name}' is {_describe_value(outputs[name])}, "
                f"expected {want}" + (f" for the card's {k} classes {card.classes}" if "K" in spec.dims else "")
            )


def _dims(value: onnx.ValueInfoProto) -> list[int | str] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]


def _shape_text(dims: list[int | str] | None) -> str:
    return "unknown" if dims is None else "(" + ", ".join(str(d) for d in dims) + ")"


def _describe_value(value: onnx.ValueInfoProto) -> str:
    elem = (
        onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
        if value.type.HasField("tensor_type")
        else "not a tensor"
    )
    return f"{elem.lower()} {_shape_text(_dims(value))}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# -- changing the thresholds in a model file ------------------------------------------------------------------


def write_thresholds(path: str | Path, thresholds: Thresholds) -> ModelCard:
    """Replace the thresholds in the card of an andon ``.onnx``, atomically; returns the card as written.

    The file is validated first (a graph changed after export is refused, never re-signed); only the card
    changes, so the content hash, which excludes the card, stays the same and the file still loads.
    """
    import os
    import tempfile

    from andon.inspect.card import CARD_METADATA_KEY

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist" if not path.exists() else f"{path} is not a file")
    model = parse_model(path.read_bytes(), path)
    refuse_external_data(model, path)
    card = _read_card(model, path)
    _verify_hash(model, card, path)
    new_card = card.with_thresholds(thresholds.model_dump())
    for prop in model.metadata_props:
        if prop.key == CARD_METADATA_KEY:
            prop.value = new_card.to_json()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(model.SerializeToString())
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return new_card
