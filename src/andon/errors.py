"""Domain errors.

Every error a user can cause is an ``AndonError`` subclass whose message names the bad value and what is
allowed. The CLI prints ``str(error)`` on one line and exits non-zero; the service maps them to HTTP in one
place (``andon.service.errors``). Nothing else should catch-and-reformat them.
"""

from __future__ import annotations


class AndonError(Exception):
    """Base class of errors caused by input (files, options, requests), not by bugs."""

    #: stable machine-readable code, used in the API's JSON error shape
    code: str = "andon_error"
    #: HTTP status the service answers with
    http_status: int = 400

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class ConfigError(AndonError):
    """A recipe, settings file or option has a bad key or value."""

    code = "bad_config"


class DatasetError(AndonError):
    """A data folder or manifest cannot be used."""

    code = "bad_dataset"


class ImageDecodeError(AndonError):
    """Bytes that are not a decodable image, or an image the model cannot take."""

    code = "bad_image"
    http_status = 422


class ImageTooLargeError(ImageDecodeError):
    """An image whose pixel count (read from its header) exceeds the limit: a decompression bomb guard."""

    code = "image_too_large"
    http_status = 413


class UnsupportedFormatError(ImageDecodeError):
    """An image format that is not allowed."""

    code = "unsupported_format"
    http_status = 415


class ModelCardError(AndonError):
    """A model card is missing, incomplete or inconsistent."""

    code = "bad_model_card"
    http_status = 422


class ModelFileError(AndonError):
    """A model file that is not a loadable, self-describing andon ONNX file."""

    code = "bad_model_file"
    http_status = 422


class ModelRuntimeError(ModelFileError):
    """A model file that onnxruntime itself refuses to load. ``detail`` is onnxruntime's own text: for the
    log and the command line, never for an API answer (it names the server's paths and internals)."""

    def __init__(self, message: str, *, detail: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.detail = detail


class UnknownModelError(AndonError):
    """A backbone name that is not in the registry."""

    code = "unknown_model"


class WeightsError(AndonError):
    """Pretrained weights that cannot be found or do not fit the network."""

    code = "bad_weights"


class CalibrationError(AndonError):
    """Thresholds that cannot meet the requested targets on the given data."""

    code = "calibration_failed"


class ExportError(AndonError):
    """An export that failed its own checks (parity, accuracy bound)."""

    code = "export_failed"


class RunError(AndonError):
    """A training run folder that is missing or incomplete (no checkpoint, no recipe)."""

    code = "bad_run"


class RegistryError(AndonError):
    """A model registry operation that cannot be done (unknown version, nothing to roll back to, clash)."""

    code = "registry_error"
    http_status = 409


class InvalidVersionError(RegistryError):
    """A model version name that cannot name a registry entry (a request's mistake, not a conflict)."""

    code = "invalid_request"
    http_status = 422


class UnknownProductError(AndonError):
    """A product (SKU) that has no model promoted for it: a frame or a line selection naming it is refused."""

    code = "unknown_product"
    http_status = 422


class NotFoundError(AndonError):
    """A record, model version or key that does not exist."""

    code = "not_found"
    http_status = 404


class StorageError(AndonError):
    """The image store or the database cannot take a write right now; nothing was stored."""

    code = "storage_unavailable"
    http_status = 503


class DiskFullError(StorageError):
    """The disk where frames are stored is full, or below the space kept back for the database: nothing was
    stored. Reading and review keep working."""

    code = "insufficient_storage"
    http_status = 507
