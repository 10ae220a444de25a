"""Service settings: the one place configuration is read (defaults < config file < ANDON_* env < CLI flags).

``Settings.load(config_file, **overrides)`` is called once, by ``andon serve`` (or a test, or the uvicorn
worker factory), and the resulting object is passed to ``create_app``. Nothing reads the environment at
import time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from andon.errors import ConfigError
from andon.inspect.decoding import DEFAULT_MAX_PIXELS, DEFAULT_MAX_PIXELS_PER_BYTE, SUPPORTED_FORMATS

#: the environment variable the uvicorn worker factory reads the config file path from
CONFIG_ENV = "ANDON_CONFIG"

PartPolicy = Literal["worst", "majority"]
#: where verdicts go besides the camera's HTTP answer (docs/line.md)
LineSink = Literal["mqtt", "modbus", "opcua"]
#: the alarms the service can watch (docs/line.md, "Alarms")
AlarmKind = Literal["p_chart", "score_drift", "frame_quality"]
#: registers of one Modbus verdict block before the part id (sequence, result, flags, part id length)
MODBUS_BLOCK_HEAD = 4
_LINE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
# S3 names (docs/reliability.md, "Object storage")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_LIKE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
_REGION = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def _check_blocks(blocks: dict[str, int], kind: str, part_id_registers: int, taken: list[tuple[int, int, str]]) -> None:
    """Each Modbus block inside the register space, overlapping nothing in ``taken`` nor each other."""
    size = MODBUS_BLOCK_HEAD + part_id_registers
    taken = list(taken)
    for name, start in sorted(blocks.items(), key=lambda kv: kv[1]):
        if not _LINE_ID.match(name) or len(name) > 64:
            raise ValueError(f"{name!r} is not a {kind} id (letters, digits, . _ : / -; at most 64)")
        if not 0 <= start <= 65536 - size:
            raise ValueError(
                f"the block of {kind} {name!r} at register {start} needs {size} registers; "
                f"it must start between 0 and {65536 - size}"
            )
        for lo, hi, what in taken:
            if start < hi and lo < start + size:
                raise ValueError(
                    f"the block of {kind} {name!r} (registers {start}-{start + size - 1}) overlaps {what} "
                    f"(registers {lo}-{hi - 1})"
                )
        taken.append((start, start + size, f"the block of {name!r}"))


def _registers_in_use(data: dict, *, part_blocks: bool = False, alarms: bool = False) -> list[tuple[int, int, str]]:
    """(first, end, what) of the Modbus registers the settings validated so far claim: the heartbeat, the
    cameras' blocks, and on request the lines' part blocks and alarm registers."""
    size = MODBUS_BLOCK_HEAD + data.get("modbus_part_id_registers", 8)
    beat = data.get("modbus_heartbeat_register", 0)
    taken = [(beat, beat + 1, "the heartbeat register")]
    taken += [(a, a + size, f"the block of camera {c!r}") for c, a in (data.get("modbus_blocks") or {}).items()]
    if part_blocks:
        taken += [(a, a + size, f"the block of line {c!r}") for c, a in (data.get("modbus_part_blocks") or {}).items()]
    if alarms:
        registers = data.get("modbus_alarm_registers") or {}
        taken += [(a, a + 1, f"the alarm register of line {c!r}") for c, a in registers.items()]
    return taken


def _claim_register(taken: list[tuple[int, int, str]], register: int, what: str) -> None:
    """One holding register for ``what``: inside 0..65535 and overlapping nothing in ``taken`` (then added to it)."""
    if not 0 <= register <= 65535:
        raise ValueError(f"{what} is {register}; registers are 0 to 65535")
    for lo, hi, other in taken:
        if lo <= register < hi:
            raise ValueError(f"{what} ({register}) overlaps {other} (registers {lo}-{hi - 1})")
    taken.append((register, register + 1, what))


class Settings(BaseSettings):
    """Everything ``andon serve`` can be told; each field is also ``ANDON_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="ANDON_", extra="forbid", validate_default=True)

    # where things live
    data_dir: Path = Field(Path("andon-data"), description="registry, images and the SQLite database live here")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default sqlite:///<data_dir>/andon.db. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db",
    )
    model: Path | None = Field(
        None,
        description="an .onnx file added to the registry and promoted on start "
        "when the registry has no active model (or this file is not the active one)",
    )

    # network
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes; each holds its own model")

    # access
    public_health: bool | None = Field(
        None,
        description="/metrics and /readyz without a credential (they name cameras, lines, model versions and "
        "queue depth); None: only when bound to loopback. Otherwise they need a monitor, operator or engineer "
        "key: give Prometheus a monitor key ('andon keys create --role monitor', which reads nothing else) as "
        "its bearer token (scrape config authorization.credentials_file), and a readiness probe the same "
        "header (Kubernetes httpGet.httpHeaders). /livez is always open",
    )
    allow_open_mode_after_keys: bool = Field(
        False,
        description="once a key has existed the service never serves requests without a credential, even "
        "when every key is revoked; true lets a database whose keys are all revoked fall back to open mode "
        "(logged as a warning)",
    )

    # inference and admission control
    inference_threads: int = Field(
        0, ge=0, le=64, description="concurrent inferences per worker process; 0 = usable cores / workers (max 4)"
    )
    intra_op_threads: int = Field(
        0, ge=0, le=64, description="onnxruntime threads per inference; 0 = cores / workers / inference_threads"
    )
    queue_size: int = Field(
        16, ge=0, le=4096, description="frames waiting for a free inference slot before new ones get 503 + Retry-After"
    )
    retry_after_s: int = Field(1, ge=1, le=3600)

    # input limits
    max_body_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="request body cap, also for chunked bodies")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    allowed_formats: frozenset[str] = Field(SUPPORTED_FORMATS)
    # frame intake: what one frame may cost (docs/reliability.md, tests/test_intake_*.py)
    max_decode_ratio: float = Field(
        128.0,
        ge=1.0,
        description="a frame may decode (JPEGs at reduced DCT scale) to at most this many times the model "
        "input's pixels (128 x 224x224 = 6.4 MP) unless it is large on the wire too (max_pixels_per_byte); "
        "other frames get 413 before any pixel is decoded",
    )
    max_pixels_per_byte: float = Field(
        DEFAULT_MAX_PIXELS_PER_BYTE,
        ge=1.0,
        description="a frame decoding to at most this many pixels per byte of its file is no decompression bomb, "
        "whatever the model's size (a 12 MP camera PNG holds about 2-4, an 8-bit BMP 1; a 97 KB PNG of "
        "10000x10000 holds 1,000)",
    )
    memory_budget_mb: int = Field(
        512,
        ge=16,
        description="bodies and decoded frames admitted at once; beyond it 503 + Retry-After. Frames over "
        "their share (budget / 2 / (inference threads + queue)) together hold at most half of it",
    )
    max_batch_frames: int = Field(16, ge=1, le=256)
    max_batch_bytes: int = Field(100 * 1024 * 1024, ge=1024, description="body cap of /v1/inspections/batch")
    max_model_bytes: int = Field(1024 * 1024 * 1024, ge=1024, description="body cap of model uploads")
    cameras: list[str] = Field(
        default_factory=list,
        description="known camera ids; empty = any (unless camera "
        "keys exist, whose camera ids are then the known ones)",
    )

    # storage and retention
    pass_sample_rate: float = Field(
        0.01, ge=0.0, le=1.0, description="fraction of passed frames whose image is kept (every non-pass image is kept)"
    )
    min_free_disk_mb: int = Field(512, ge=0, description="readiness fails below this much free disk")
    disk_reserve_mb: int = Field(
        128,
        ge=0,
        description="frames are refused (507) when storing one would leave less than this free, keeping room "
        "for the database (review verdicts); never above min_free_disk_mb, so readiness flips first",
    )
    retention_pass_days: float | None = Field(
        30.0, gt=0, description="drop images of passed frames older than this; None keeps them"
    )
    retention_reviewed_days: float | None = Field(
        180.0,
        gt=0,
        description="drop images of reviewed frames older than this; unreviewed flagged frames are never pruned",
    )
    retention_interval_s: float = Field(3600.0, ge=1.0)
    orphan_grace_s: float | None = Field(
        3600.0,
        ge=60.0,
        description="retention also deletes stored images no "
        "record names (a crash between image and record) once older than "
        "this; None: never",
    )
    registry_poll_s: float = Field(
        1.0,
        ge=0.05,
        description="how often every worker reads the registry's generation (in the database); a change made "
        "anywhere is served within this plus the new model's fetch and load (docs/scaling.md)",
    )

    # where images go: the local disk, or an S3-compatible bucket shared by replicas (docs/reliability.md)
    image_store: Literal["local", "s3"] = Field(
        "local", description="local: <data_dir>/images; s3: the bucket s3_bucket (needs the [s3] extra)"
    )
    s3_endpoint_url: str | None = Field(
        None, description="http(s)://host[:port] of an S3-compatible server (MinIO, Ceph); None: AWS S3"
    )
    s3_bucket: str | None = Field(None, description="the bucket (it must exist); required with image_store: s3")
    s3_prefix: str = Field("", max_length=512, description="object names start with <prefix>/ (e.g. plant1/line3)")
    s3_region: str | None = Field(None, description="e.g. eu-central-1; None: the AWS chain's, else us-east-1")
    s3_secret_access_key: SecretStr | None = Field(
        None, description="with s3_access_key_id; None: the standard AWS chain (env, ~/.aws, instance role)"
    )
    s3_access_key_id: str | None = Field(None, min_length=1, max_length=128)
    s3_connect_timeout_s: float = Field(1.0, gt=0.0, le=60.0, description="per attempt")
    s3_read_timeout_s: float = Field(5.0, gt=0.0, le=300.0, description="per attempt")
    s3_max_attempts: int = Field(
        2,
        ge=1,
        le=10,
        description="tries of one S3 call, the first included, before the frame gets 503: a store that hangs "
        "answers 503 after about attempts x (read timeout + 1 s) plus a back-off of at most 1 s, 2 s, ... per retry",
    )

    # decisions
    part_policy: PartPolicy = Field(
        "worst",
        description="worst: the worst frame decision is the part's; "
        "majority: the most common decision, ties go to the worse",
    )
    shadow_max_load: float = Field(
        0.5, ge=0.0, le=1.0, description="skip shadow scoring when the inference queue is fuller than this fraction"
    )

    # review station (pages for operators and engineers)
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="a login lasts this long (a shift and some)")
    cookie_secure: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Secure flag of the session cookie; auto: when the request came over HTTPS (use "
        "always behind a TLS-terminating proxy)",
    )

    # the line: verdicts to the PLC and the plant's broker (docs/line.md)
    line_sinks: list[LineSink] = Field(
        default_factory=list,
        description="where every frame verdict is also delivered, through the database outbox: mqtt, modbus; "
        "empty: only the HTTP answer",
    )
    line_deadline_ms: float = Field(
        200.0,
        ge=1.0,
        le=600_000.0,
        description="a verdict whose delivery starts later than this after the frame was received is "
        "delivered as reject, flagged late (the record keeps the model's decision)",
    )
    line_heartbeat_s: float = Field(
        0.5,
        ge=0.05,
        le=60.0,
        description="the heartbeat register is incremented this often while the service has a model and "
        "its sink is reachable; the PLC's watchdog rejects when it stops",
    )
    line_retry_initial_s: float = Field(
        0.05, gt=0.0, le=60.0, description="first wait before a sink that failed is tried again"
    )
    line_retry_max_s: float = Field(
        2.0, gt=0.0, le=300.0, description="the wait between tries doubles up to this while a sink stays down"
    )
    line_outbox_keep_days: float | None = Field(
        7.0,
        gt=0,
        description="delivered outbox rows older than this are deleted (hourly, the newest of each sink kept); "
        "undelivered rows never are; None keeps them all",
    )
    line_cameras: dict[str, list[str]] = Field(
        default_factory=dict,
        description="line id -> the cameras that each see every part of that line: once all of them have "
        "reported a part id, the part verdict (the worst of theirs) is delivered; when they have not within "
        "line_deadline_ms of the part's first frame, the part verdict is reject, naming the missing cameras",
    )
    mqtt_host: str = Field("127.0.0.1", min_length=1, max_length=253, description="the MQTT broker")
    mqtt_port: int = Field(1883, ge=1, le=65535)
    mqtt_topic_prefix: str = Field(
        "andon",
        min_length=1,
        max_length=128,
        description="verdicts go to <prefix>/<line>/<camera>/verdict, the service status to <prefix>/status",
    )
    mqtt_qos: Literal[1, 2] = Field(1, description="QoS of verdict messages (0 is refused: it can lose them)")
    mqtt_client_id: str = Field("andon", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    mqtt_keepalive_s: int = Field(10, ge=2, le=3600)
    mqtt_timeout_s: float = Field(2.0, gt=0.0, le=60.0, description="connect and PUBACK wait before a retry")
    modbus_host: str = Field("127.0.0.1", min_length=1, max_length=253, description="the PLC (Modbus TCP server)")
    modbus_port: int = Field(502, ge=1, le=65535)
    modbus_unit: int = Field(1, ge=0, le=247, description="Modbus unit (device) id of the PLC")
    modbus_timeout_s: float = Field(1.0, gt=0.0, le=60.0)
    modbus_heartbeat_register: int = Field(0, ge=0, le=65535, description="holding register of the heartbeat")
    modbus_part_id_registers: int = Field(
        8, ge=1, le=64, description="registers of the part id echo (2 ASCII characters each)"
    )
    modbus_blocks: dict[str, int] = Field(
        default_factory=dict,
        description="camera id -> first holding register of its verdict block (docs/line.md has the layout); "
        "cameras without a block send no verdicts to the PLC",
    )

    modbus_part_blocks: dict[str, int] = Field(
        default_factory=dict,
        description="line id (one of line_cameras) -> first holding register of its part verdict block (the "
        "same layout as a camera's block)",
    )
    modbus_alarm_registers: dict[str, int] = Field(
        default_factory=dict,
        description="line id -> holding register of its alarm bits (bit 0 p-chart, bit 1 score drift, bit 2 "
        "frame quality; docs/line.md, 'Alarms'); lines without one get no alarms on the PLC",
    )
    line_refused_queue: int = Field(
        1024,
        ge=0,
        le=100_000,
        description="a frame refused with 503 (overload, no model) that names its line, camera and part id is "
        "delivered to the line as reject (reason overload / no model) through a bounded queue of this many "
        "refusals; a refusal that finds it full is not delivered (the PLC's per-part timeout rejects the part); "
        "0: refused frames get no verdict on the line",
    )

    # alarms: on the line dashboard, GET /v1/alarms and the line sinks (docs/line.md, "Alarms")
    alarms: list[AlarmKind] = Field(
        default_factory=list,
        description="the alarms the service watches: p_chart (reject/review rate outside its p-chart limits), "
        "score_drift (PSI at or above alarm_drift_psi), frame_quality (a camera's brightness, contrast or focus "
        "outside its usual band); empty: none",
    )
    alarm_interval_s: float = Field(30.0, ge=0.05, le=3600.0, description="how often the alarms are evaluated")
    alarm_window_s: float = Field(
        3600.0,
        ge=2.0,
        le=7 * 86400.0,
        description="the frames an evaluation reads: the newest subgroup against the p-chart of this window",
    )
    alarm_subgroup_s: float = Field(
        300.0,
        ge=1.0,
        le=86400.0,
        description="the newest subgroup (the frames of the last this many seconds) is the point each alarm "
        "judges; the window holds 2 to 1000 subgroups",
    )
    alarm_min_frames: int = Field(
        30, ge=1, le=1_000_000, description="a newest subgroup with fewer frames is not judged (alarms unchanged)"
    )
    alarm_p_chart_rates: list[Literal["reject", "review"]] = Field(
        default_factory=lambda: ["reject", "review"], description="the rates p_chart alarms watch"
    )
    alarm_p_chart_sigmas: float = Field(3.0, ge=1.0, le=6.0, description="p-chart limits: centre +- this many sigma")
    alarm_p_chart_scope: Literal["line", "camera"] = Field(
        "line", description="one p-chart per line (all its cameras), or one per camera"
    )
    alarm_drift_psi: float = Field(
        0.25, gt=0.0, le=10.0, description="score_drift is raised at this PSI or above (0.25: a major shift)"
    )
    alarm_quality_sigmas: float = Field(
        3.0, ge=1.0, le=20.0, description="frame_quality: the usual band is median +- this many robust sigma"
    )

    # the PLC's acknowledgement (Modbus) and andon's OPC UA server (docs/line.md, "OPC UA" and "PLC acknowledgement")
    modbus_ack_registers: dict[str, int] = Field(
        default_factory=dict,
        description="camera id (of modbus_blocks) or line id (of modbus_part_blocks) -> the holding register "
        "the PLC writes the sequence of the verdict it has taken into; andon reads it back before it writes "
        "that block's next verdict; empty (default): no acknowledgement",
    )
    modbus_ack_timeout_ms: float = Field(
        100.0,
        ge=1.0,
        le=10_000.0,
        description="how long andon waits for the PLC's acknowledgement before it writes the block's next "
        "verdict anyway and records the last one as unacknowledged",
    )
    opcua_endpoint: str = Field(
        "opc.tcp://127.0.0.1:4840/andon",
        description="where andon's OPC UA server listens: opc.tcp://host:port[/path] (0.0.0.0: every interface)",
    )
    opcua_namespace: str = Field(
        "urn:andon:line", min_length=5, max_length=200, description="the namespace URI of andon's nodes"
    )
    opcua_cameras: list[str] = Field(
        default_factory=list,
        description="cameras with a Result on the OPC UA server, besides those of line_cameras (each line of "
        "line_cameras has a part Result)",
    )
    opcua_security: Literal["none", "basic256sha256"] = Field(
        "none",
        description="none: an unsigned, unencrypted channel (SecurityPolicy None); basic256sha256: signed and "
        "encrypted channels only (Sign, SignAndEncrypt), with opcua_certificate and opcua_private_key",
    )
    opcua_certificate: Path | None = Field(None, description="the server's certificate (PEM or DER)")
    opcua_private_key: Path | None = Field(None, description="the certificate's private key (PEM or DER)")
    opcua_anonymous: bool = Field(False, description="allow anonymous sessions (say so explicitly)")
    opcua_username: str | None = Field(
        None, min_length=1, max_length=64, description="the one user account (the PLC's), with opcua_password"
    )
    opcua_password: SecretStr | None = Field(None, description="the password of opcua_username")
    opcua_ack_timeout_ms: float | None = Field(
        None,
        ge=1.0,
        le=10_000.0,
        description="the PLC writes each Result's Sequence into its Ack; andon waits this long for it before the "
        "Result's next verdict; None (default): no acknowledgement (Ack is read-only)",
    )

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is None:
            return v
        url = urlsplit(v)
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
            raise ValueError("an S3 endpoint is http(s)://host[:port], e.g. http://minio:9000")
        if url.username is not None or url.password is not None:
            raise ValueError("an S3 endpoint URL carries no credentials: use s3_access_key_id / s3_secret_access_key")
        try:
            url.port  # noqa: B018 - raises on a port that is no number or out of range
        except ValueError:
            raise ValueError("an S3 endpoint's port is a number from 1 to 65535") from None
        return v.rstrip("/")

    @field_validator("s3_bucket")
    @classmethod
    def _bucket(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            if info.data.get("image_store") == "s3":
                raise ValueError("image_store: s3 needs s3_bucket (the name of an existing bucket)")
            return v
        if not _BUCKET.match(v) or ".." in v or _IP_LIKE.match(v) or v.startswith(("xn--", "sthree-")):
            raise ValueError(
                "a bucket name is 3-63 lowercase letters, digits, '.' and '-', starts and ends with a letter "
                "or digit, has no '..', is not an IP address and does not start with 'xn--' or 'sthree-'"
            )
        return v

    @field_validator("s3_prefix")
    @classmethod
    def _s3_prefix(cls, v: str) -> str:
        v = v.strip("/")
        if v and not _PREFIX.match(v):
            raise ValueError(
                "an S3 prefix is '/'-separated names of letters, digits, '.', '_' and '-', each starting with "
                "a letter or digit (e.g. plant1/line3)"
            )
        return v

    @field_validator("s3_region")
    @classmethod
    def _region(cls, v: str | None) -> str | None:
        if v is not None and not _REGION.match(v):
            raise ValueError("a region is lowercase letters, digits and '-', e.g. eu-central-1")
        return v

    @field_validator("s3_access_key_id")
    @classmethod
    def _key_pair(cls, v: str | None, info: ValidationInfo) -> str | None:
        # checked here, not on the secret: a bad-setting message shows the value it refused
        if (v is None) != (info.data.get("s3_secret_access_key") is None):
            raise ValueError("give s3_access_key_id and s3_secret_access_key together, or neither (the AWS chain)")
        return v

    @field_validator("allowed_formats", mode="before")
    @classmethod
    def _formats(cls, v: Any) -> frozenset[str]:
        if isinstance(v, str):
            v = [p for p in v.replace(",", " ").split() if p]
        names = frozenset(str(x).upper().replace("JPG", "JPEG") for x in v)
        unknown = names - SUPPORTED_FORMATS
        if unknown:
            raise ValueError(f"formats {sorted(unknown)} are not supported; choose from {sorted(SUPPORTED_FORMATS)}")
        if not names:
            raise ValueError("at least one image format must be allowed")
        return names

    @field_validator("line_sinks")
    @classmethod
    def _sinks(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each sink may be named once; got {v}")
        if v and info.data.get("workers", 1) > 1:
            raise ValueError(
                "line sinks need workers: 1 (one process delivers the outbox, in order); "
                f"got workers: {info.data.get('workers')}"
            )
        return v

    @field_validator("line_retry_max_s")
    @classmethod
    def _retry(cls, v: float, info: ValidationInfo) -> float:
        first = info.data.get("line_retry_initial_s")
        if first is not None and v < first:
            raise ValueError(f"line_retry_max_s must be at least line_retry_initial_s ({first})")
        return v

    @field_validator("line_cameras")
    @classmethod
    def _line_cameras(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for line, cameras in v.items():
            for name in (line, *cameras):
                if not _LINE_ID.match(name) or len(name) > 64:
                    raise ValueError(f"{name!r} is not a line or camera id (letters, digits, . _ : / -; at most 64)")
            if not cameras or len(set(cameras)) != len(cameras):
                raise ValueError(f"line {line!r} needs its cameras, each once; got {cameras}")
        return v

    @field_validator("mqtt_topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        bad = sorted({c for c in v if c in "+#\x00" or ord(c) < 32})
        if bad or v.startswith("/") or v.endswith("/") or "//" in v:
            raise ValueError(
                "an MQTT topic prefix has levels separated by single '/', without '+', '#' or control "
                "characters, and does not start or end with '/'"
            )
        return v

    @field_validator("modbus_blocks")
    @classmethod
    def _blocks(cls, v: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        if "modbus" in (info.data.get("line_sinks") or []) and not v:
            raise ValueError(
                "line_sinks names modbus but modbus_blocks is empty: give each camera whose verdicts the PLC "
                "reads the first register of its block, e.g. {cam1: 10}"
            )
        beat = info.data.get("modbus_heartbeat_register", 0)
        _check_blocks(
            v, "camera", info.data.get("modbus_part_id_registers", 8), [(beat, beat + 1, "the heartbeat register")]
        )
        return v

    @field_validator("modbus_part_blocks")
    @classmethod
    def _part_blocks(cls, v: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        lines = info.data.get("line_cameras") or {}
        unknown = sorted(set(v) - set(lines))
        if unknown:
            raise ValueError(
                f"part blocks for lines {unknown} that line_cameras does not name; lines: {sorted(lines) or 'none'}"
            )
        _check_blocks(v, "line", info.data.get("modbus_part_id_registers", 8), _registers_in_use(info.data))
        return v

    @field_validator("modbus_alarm_registers")
    @classmethod
    def _alarm_registers(cls, v: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        taken = _registers_in_use(info.data, part_blocks=True)
        for line, register in sorted(v.items(), key=lambda kv: kv[1]):
            if not _LINE_ID.match(line) or len(line) > 64:
                raise ValueError(f"{line!r} is not a line id (letters, digits, . _ : / -; at most 64)")
            _claim_register(taken, register, f"the alarm register of line {line!r}")
        return v

    @field_validator("alarms")
    @classmethod
    def _alarm_kinds(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each alarm may be named once; got {v}")
        if v and info.data.get("workers", 1) > 1:
            raise ValueError(
                f"alarms need workers: 1 (one process evaluates them); got workers: {info.data.get('workers')}"
            )
        return v

    @field_validator("alarm_subgroup_s")
    @classmethod
    def _alarm_subgroup(cls, v: float, info: ValidationInfo) -> float:
        window = info.data.get("alarm_window_s")
        if window is not None and not 2 <= window / v <= 1000:
            raise ValueError(
                f"alarm_window_s ({window:g} s) must hold 2 to 1000 subgroups of alarm_subgroup_s; got {window / v:.3g}"
            )
        return v

    @field_validator("alarm_p_chart_rates")
    @classmethod
    def _alarm_rates(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each rate may be named once; got {v}")
        if not v and "p_chart" in (info.data.get("alarms") or []):
            raise ValueError("alarms names p_chart but alarm_p_chart_rates is empty: name reject, review or both")
        return v

    @field_validator("modbus_ack_registers")
    @classmethod
    def _ack_registers(cls, v: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        cameras, lines = info.data.get("modbus_blocks") or {}, info.data.get("modbus_part_blocks") or {}
        taken = _registers_in_use(info.data, part_blocks=True, alarms=True)
        for name, register in sorted(v.items(), key=lambda kv: kv[1]):
            if name in cameras and name in lines:
                raise ValueError(f"{name!r} is both a camera and a line with a block: its ack register is ambiguous")
            if name not in cameras and name not in lines:
                raise ValueError(
                    f"ack register for {name!r}, which has no block; cameras: {sorted(cameras) or 'none'}, "
                    f"lines: {sorted(lines) or 'none'}"
                )
            _claim_register(taken, register, f"the ack register of {name!r}")
        return v

    @field_validator("opcua_endpoint")
    @classmethod
    def _opcua_endpoint(cls, v: str) -> str:
        url = urlsplit(v)
        try:
            port = url.port
        except ValueError:
            port = -1
        if url.scheme != "opc.tcp" or not url.hostname or port is None or not 1 <= port <= 65535:
            raise ValueError(
                "an OPC UA endpoint is opc.tcp://host:port[/path], port 1 to 65535, e.g. opc.tcp://0.0.0.0:4840/andon"
            )
        if url.username or url.password or url.query or url.fragment:
            raise ValueError("an OPC UA endpoint carries no credentials, query or fragment: opc.tcp://host:port[/path]")
        return v

    @field_validator("opcua_namespace")
    @classmethod
    def _opcua_namespace(cls, v: str) -> str:
        if not v.startswith(("urn:", "http://", "https://")) or any(c.isspace() or not c.isprintable() for c in v):
            raise ValueError("an OPC UA namespace is a URI without spaces, e.g. urn:andon:plant1:line3")
        return v

    @field_validator("opcua_cameras")
    @classmethod
    def _opcua_cameras(cls, v: list[str], info: ValidationInfo) -> list[str]:
        for name in v:
            if not _LINE_ID.match(name) or len(name) > 64:
                raise ValueError(f"{name!r} is not a camera id (letters, digits, . _ : / -; at most 64)")
        if len(set(v)) != len(v):
            raise ValueError(f"each camera may be named once; got {v}")
        if "opcua" in (info.data.get("line_sinks") or []) and not v and not info.data.get("line_cameras"):
            raise ValueError(
                "line_sinks names opcua but no camera has a Result: name them in opcua_cameras (or line_cameras)"
            )
        return v

    @field_validator("opcua_private_key")
    @classmethod
    def _opcua_keys(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        cert, secure = info.data.get("opcua_certificate"), info.data.get("opcua_security") == "basic256sha256"
        if secure and (cert is None or v is None):
            raise ValueError("opcua_security basic256sha256 needs opcua_certificate and opcua_private_key")
        if not secure and (cert is not None or v is not None):
            raise ValueError("opcua_certificate and opcua_private_key are used with opcua_security basic256sha256 only")
        for what, path in (("opcua_certificate", cert), ("opcua_private_key", v)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{what} {path} is not a file")
        return v

    @field_validator("opcua_password")
    @classmethod
    def _opcua_users(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        user = info.data.get("opcua_username")
        if (user is None) != (v is None):
            raise ValueError("give opcua_username and opcua_password together, or neither")
        if "opcua" in (info.data.get("line_sinks") or []) and user is None and not info.data.get("opcua_anonymous"):
            raise ValueError(
                "the OPC UA server needs a way in: opcua_username + opcua_password, or opcua_anonymous: true"
            )
        return v

    @model_validator(mode="after")
    def _threads(self) -> Settings:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        share = max(1, cores // self.workers)  # each worker process its share of the cores, not all of them
        if self.inference_threads == 0:
            object.__setattr__(self, "inference_threads", max(1, min(4, share)))
        if self.intra_op_threads == 0:
            object.__setattr__(self, "intra_op_threads", max(1, share // self.inference_threads))
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'andon.db').resolve()}"

    @property
    def disk_reserve_bytes(self) -> int:
        """Free space the image store never writes into: ``disk_reserve_mb``, capped at ``min_free_disk_mb``."""
        return min(self.disk_reserve_mb, self.min_free_disk_mb) * 1024 * 1024

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def registry_dir(self) -> Path:
        return self.data_dir / "models"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("yaml_file"):
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | str | None = None, **overrides: Any) -> Settings:
        """Settings from defaults, then ``config_file`` (YAML/JSON), then ANDON_* env, then ``overrides``.

        ``overrides`` whose value is None are ignored (unset CLI flags).
        """
        overrides = {k: v for k, v in overrides.items() if v is not None}
        klass: type[Settings] = cls
        if config_file is not None:
            path = Path(config_file)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            klass = type("FileSettings", (cls,), {"model_config": {**cls.model_config, "yaml_file": path}})
        try:
            return klass(**overrides)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ())) or "settings"
            raise ConfigError(f"bad setting {where}: {err.get('msg', 'invalid')} (got {err.get('input')!r})") from None

    @classmethod
    def from_environment(cls) -> Settings:
        """For uvicorn worker processes: the config file named by ANDON_CONFIG, plus the environment."""
        return cls.load(os.environ.get(CONFIG_ENV) or None)
