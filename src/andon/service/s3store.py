"""Frame images in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ...): the ``ImageStore`` of a service
whose replicas share one object store. ``image_store: s3`` in the settings; boto3 comes with the ``[s3]``
extra (``pip install 'andon[serve,s3]'``).

Durability: ``put`` is one ``PutObject`` with a Content-MD5 (the server refuses a body that arrived damaged)
and returns only once the server answered 200, when S3 has stored the whole object durably. A PUT is atomic:
a reader sees the old object, or the whole new one, never a part. So the service's rule holds as on the local
disk: the object is stored before the record commits, and before the 2xx.

Bounded waits: every call has a connect and a read timeout and a bounded number of attempts (botocore's
``standard`` retry mode, ``s3_max_attempts`` the first included), so a store that is down or hangs gives
``StorageError`` (503), never a hang: a refused connection at once, a store that accepts and never answers
after about ``attempts x (read timeout + 1 s)`` (a PUT waits up to 1 s for ``100 Continue``) plus botocore's
back-off (at most 1 s before the second try, 2 s before the third, ...): 13 s at most with the defaults (5 s,
2 attempts). The readiness probe (``healthcheck``: HeadBucket) makes one attempt.

Partial writes: a single PUT leaves none, and this store never starts a multipart upload (a frame is at
most ``max_body_bytes``, far under the 5 GB of one PUT), so ``remove_partial_writes`` does nothing. A PUT that
timed out may still have landed: its object has no record, and the orphan sweep removes it after the grace.

Writers: replicas share the bucket and S3 has no lock that dies with its holder, so ``join_writers(sole=True)``
always answers False ("another writer may be between an object and its record"). The start-up sweep then
keeps the grace rule: it deletes only objects that no record names and that were written more than
``orphan_grace_s`` before (S3's own LastModified, compared with this host's clock), so it never deletes a
live replica's just-written object whose record is about to commit. The grace must exceed the longest put ->
commit delay plus the clock skew between the replicas and the store (the minimum, 60 s, is ample for both on
NTP-synced hosts; the default is an hour).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from andon.errors import ConfigError, NotFoundError, StorageError
from andon.service.storage import MODELS_PREFIX, valid_key

if TYPE_CHECKING:
    from andon.service.settings import Settings

log = logging.getLogger("andon.service")

#: HTTP connections kept per client: inference threads and the HTTP threadpool may all store at once
MAX_POOL_CONNECTIONS = 32
_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3Store:
    """Images as objects ``<prefix>/<key>`` in ``bucket``; keys as on the local disk (``2026/11/25/<id>.jpg``).

    Credentials: ``access_key_id`` + ``secret_access_key`` when given, else boto3's standard chain
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, an instance or pod role).
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        connect_timeout_s: float = 1.0,
        read_timeout_s: float = 5.0,
        max_attempts: int = 2,
        list_page_size: int = 1000,
        kind: str = "image",
    ) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ConfigError(
                "image_store: s3 needs boto3, which is not installed: pip install 'andon[serve,s3]'"
            ) from None
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.list_page_size = list_page_size
        #: what its objects are, in messages: "image" (frames, heatmaps) or "model" (the registry's files)
        self.kind = kind
        session = boto3.session.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, region_name=region
        )

        def config(attempts: int) -> Config:
            return Config(
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                retries={"total_max_attempts": attempts, "mode": "standard"},  # the first one included
                max_pool_connections=MAX_POOL_CONNECTIONS,
                # Content-MD5 instead of the newer flexible checksums: every S3-compatible server knows it
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path" if endpoint_url else "auto"},
            )

        self._client = session.client("s3", endpoint_url=endpoint_url, config=config(max_attempts))
        self._probe = session.client("s3", endpoint_url=endpoint_url, config=config(1))

    @classmethod
    def from_settings(cls, settings: Settings, *, kind: str = "image") -> S3Store:
        secret = settings.s3_secret_access_key
        return cls(
            settings.s3_bucket or "",
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret is not None else None,
            connect_timeout_s=settings.s3_connect_timeout_s,
            read_timeout_s=settings.s3_read_timeout_s,
            max_attempts=settings.s3_max_attempts,
            kind=kind,
        )

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}"

    def _object(self, key: str) -> str:
        if not valid_key(key):
            raise ValueError(f"invalid storage key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _failed(self, what: str, exc: Exception) -> StorageError:
        """The one-line reason for the answer (503); botocore's own text goes to the log."""
        log.warning("%s store %s: %s failed: %s", self.kind, self.where, what, exc)
        return StorageError(f"{self.kind} store {self.where}: cannot {what}: {_reason(exc)}")

    def put(self, key: str, data: bytes) -> None:
        name = self._object(key)
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        try:
            self._client.put_object(Bucket=self.bucket, Key=name, Body=data, ContentMD5=md5)
        except Exception as exc:  # noqa: BLE001 - any botocore failure: not stored (a timed-out PUT is swept)
            raise self._failed(f"store {self.kind} {key}", exc) from None

    def get(self, key: str) -> bytes:
        name = self._object(key)
        try:
            return self._client.get_object(Bucket=self.bucket, Key=name)["Body"].read()
        except Exception as exc:  # noqa: BLE001
            if _code(exc) in _MISSING:
                if self.kind != "image":
                    raise NotFoundError(f"{self.kind} {key} is not in the store {self.where}") from None
                raise NotFoundError(f"image {key} is not in the store (pruned by retention, or never kept)") from None
            raise self._failed(f"read {self.kind} {key}", exc) from None

    def delete(self, key: str) -> None:
        name = self._object(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=name)  # no error when absent
        except Exception as exc:  # noqa: BLE001
            raise self._failed(f"delete {self.kind} {key}", exc) from None

    def exists(self, key: str) -> bool:
        name = self._object(key)
        try:
            self._client.head_object(Bucket=self.bucket, Key=name)
        except Exception as exc:  # noqa: BLE001
            if _code(exc) in _MISSING:
                return False
            raise self._failed(f"look up {self.kind} {key}", exc) from None
        return True

    def stored_before(self, cutoff: dt.datetime) -> Iterator[tuple[str, int]]:
        """Every object under the prefix whose LastModified is before ``cutoff``, page by page (ListObjectsV2
        continuation tokens), keys without the prefix; objects whose names are not store keys are skipped, and
        so are the model registry's files (``models/...``: no inspection record names them, and the orphan
        sweep must never take them)."""
        start = f"{self.prefix}/" if self.prefix else ""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=start, PaginationConfig={"PageSize": self.list_page_size}
        )
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    key = item["Key"][len(start) :]
                    if key.startswith(MODELS_PREFIX + "/"):
                        continue
                    if item["LastModified"] < cutoff and valid_key(key):
                        yield key, int(item["Size"])
        except Exception as exc:  # noqa: BLE001
            raise self._failed("list images", exc) from None

    def remove_partial_writes(self, cutoff: dt.datetime) -> int:
        """Nothing to remove: a PUT is all or nothing, and this store starts no multipart uploads."""
        return 0

    def healthcheck(self) -> str | None:
        try:
            self._probe.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001
            log.warning("readiness: image store %s: %s", self.where, exc)
            return f"image store {self.where} is not reachable: {_reason(exc)}"
        return None

    def free_bytes(self) -> int | None:
        return None  # an object store has no free-space figure; quotas answer as errors on put

    def join_writers(self, *, sole: bool = False) -> bool:
        """Never alone: replicas share the bucket and nothing tells whether another one is writing (module
        docstring), so the start-up sweep keeps the grace rule."""
        return False

    def leave_writers(self) -> None:
        return None


def _code(exc: Exception) -> str:
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _reason(exc: Exception) -> str:
    """Why, in words an operator can act on, without botocore's internals."""
    from botocore.exceptions import (
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError)):
        return "the object store did not answer in time (s3_connect_timeout_s, s3_read_timeout_s)"
    if isinstance(exc, (EndpointConnectionError, ConnectionClosedError)):
        return "the object store cannot be reached (s3_endpoint_url)"
    if isinstance(exc, NoCredentialsError):
        return "no S3 credentials (s3_access_key_id + s3_secret_access_key, or the standard AWS chain)"
    code = _code(exc)
    if code in {"NoSuchBucket"} or (code == "404" and not getattr(exc, "operation_name", "").endswith("Object")):
        return "the bucket does not exist (create it, or fix s3_bucket)"
    if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
        return f"the object store refused the credentials or the bucket's policy ({code})"
    if code:
        return f"the object store answered {code}"
    return "the object store call failed (the service log has the details)"
