"""The OPC UA sink: andon runs an OPC UA **server** (asyncua) that the line's PLC or SCADA connects to.

It follows the parts of OPC 40100-1 (OPC UA for Machine Vision) that fit an inspection service, without
loading that companion specification's nodeset: a vision-system object with a system state named after the
spec's VisionStateMachine states (Operational, Preoperational, Halted, Error), and per camera (frame verdicts)
and per line of ``line_cameras`` (part verdicts) a ``Result`` object whose variables hold the last verdict, and
a ``ResultReadyEventType`` event (the spec's name) carrying the whole verdict in one notification.

Node ids are strings in the namespace ``opcua_namespace`` (docs/line.md has the table), e.g.
``ns=2;s=andon/cameras/top/Result/Sequence``; a ``/`` inside a camera or line id is written ``%2F``.

A verdict's variables are written in one step of the server's event loop, ``Sequence`` last, with nothing else
running in between: a Read of the block in one request, and every publish of a subscription with queue size 1,
sees one verdict's values. The server runs in its own thread and loop; the dispatcher's thread hands it each
write and waits for it. A server that cannot start (the port is taken, a certificate does not load) or stops
answering makes the sink fail like a PLC that is down: the outbox keeps the verdicts, the dispatcher retries
(each retry tries to start the server again) and ``andon_line_sink_up{sink="opcua"}`` is 0.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from andon.service.line.acks import AckOutcome, AckTracker, Block, block_of
from andon.service.line.errors import LineValueError, SinkUnavailableError
from andon.service.line.messages import Verdict, result_code
from andon.service.settings import Settings

log = logging.getLogger("andon.service.line")

FLAG_LATE = 1
FLAG_PART_ID_NOT_ECHOED = 2
FLAG_INCOMPLETE = 4
#: the longest part id echoed (the outbox's column); a longer or unprintable one is not echoed (flag bit 1)
MAX_PART_ID = 128
START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 5.0
#: the system state turns Error when the dispatcher has not refreshed it for this many heartbeat periods
WATCHDOG_PERIODS = 3

STATE_OPERATIONAL = "Operational"
STATE_PREOPERATIONAL = "Preoperational"
STATE_HALTED = "Halted"
STATE_ERROR = "Error"
_NULL_TIME = dt.datetime(1601, 1, 1, tzinfo=dt.timezone.utc)  # OPC UA's "no time"


def id_segment(value: str) -> str:
    """A camera or line id as one segment of a string node id."""
    return value.replace("%", "%25").replace("/", "%2F")


def camera_base(camera_id: str) -> str:
    return f"andon/cameras/{id_segment(camera_id)}/Result"


def line_base(line_id: str) -> str:
    return f"andon/lines/{id_segment(line_id)}/Result"


def wrap32(counter: int) -> int:
    """A sequence number as the UInt32 the PLC reads: 1..4294967295, never 0 (0: nothing since the start)."""
    if counter < 1:
        raise LineValueError(f"sequence numbers start at 1; got {counter}")
    return (counter - 1) % 0xFFFFFFFF + 1


def wrap16(counter: int) -> int:
    return (counter - 1) % 0xFFFF + 1


def _variant_types():
    from asyncua import ua

    T = ua.VariantType
    return {
        "Sequence": T.UInt32,
        "ResultCode": T.UInt16,
        "Decision": T.String,
        "ModelDecision": T.String,
        "Flags": T.UInt16,
        "PartId": T.String,
        "Serial": T.String,
        "Reason": T.String,
        "ModelVersion": T.String,
        "InspectionId": T.String,
        "Late": T.Boolean,
        "ReceivedAt": T.DateTime,
        "LatencyMs": T.Double,
        "MissingCameras": T.String,  # an array, part results only
        "Ack": T.UInt32,
    }


#: the Result variables in the order they are written (Sequence last); MissingCameras on part results only
RESULT_FIELDS = (
    "ResultCode",
    "Decision",
    "ModelDecision",
    "Flags",
    "PartId",
    "Serial",
    "Reason",
    "ModelVersion",
    "InspectionId",
    "Late",
    "ReceivedAt",
    "LatencyMs",
    "MissingCameras",
    "Sequence",
)


def result_values(verdict: Verdict) -> dict[str, Any]:
    """What the Result variables hold for ``verdict``, each checked to be a value its type can take."""
    echo = verdict.part_id or ""
    echoed = len(echo) <= MAX_PART_ID and echo.isprintable()
    flags = (
        (FLAG_LATE if verdict.late else 0)
        | (0 if echoed else FLAG_PART_ID_NOT_ECHOED)
        | (FLAG_INCOMPLETE if verdict.missing else 0)
    )
    latency = float(verdict.latency_ms)
    if not math.isfinite(latency) or latency < 0:
        raise LineValueError(f"a verdict's latency must be a finite number of ms >= 0; got {verdict.latency_ms!r}")
    values: dict[str, Any] = {
        "ResultCode": result_code(verdict.decision),
        "Decision": verdict.decision,
        "ModelDecision": verdict.model_decision,
        "Flags": flags,
        "PartId": echo if echoed else "",
        "Serial": verdict.serial or "",
        "Reason": verdict.reason or "",
        "ModelVersion": verdict.model_version or "",
        "InspectionId": verdict.inspection_id or "",
        "Late": bool(verdict.late),
        "ReceivedAt": verdict.received_at,
        "LatencyMs": latency,
        "Sequence": wrap32(verdict.sequence),
    }
    if verdict.kind == "part":
        values["MissingCameras"] = list(verdict.missing)
    return values


class _Users:
    """asyncua's user manager: anonymous only where ``opcua_anonymous`` says so, the one username/password
    account of the settings; every user gets the User role (never Admin, which could write read-only nodes)."""

    def __init__(self, settings: Settings) -> None:
        self.anonymous = settings.opcua_anonymous
        self.username = settings.opcua_username
        self.password = settings.opcua_password.get_secret_value() if settings.opcua_password else None

    def get_user(self, iserver, username=None, password=None, certificate=None):
        from asyncua.crypto.permission_rules import User, UserRole

        if username is None:
            return User(role=UserRole.User) if self.anonymous else None
        if self.username is None or self.password is None:
            return None
        given = password.encode() if isinstance(password, str) else (password or b"")
        ok_user = hmac.compare_digest(username.encode(), self.username.encode())
        ok_password = hmac.compare_digest(given, self.password.encode())
        return User(role=UserRole.User, name=username) if ok_user and ok_password else None


class OpcUaSink:
    name = "opcua"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cameras = sorted(set(settings.opcua_cameras) | {c for cs in settings.line_cameras.values() for c in cs})
        self.lines = sorted(settings.line_cameras)
        self.acks = AckTracker(settings.opcua_ack_timeout_ms) if settings.opcua_ack_timeout_ms else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server = None
        self._ns = 0
        self._events: dict[Block, Any] = {}
        self._sequence: dict[Block, int] = {}  # the Sequence value each block holds (UInt32), for Ack checks
        self._beats = int.from_bytes(os.urandom(2), "big")
        self._state = ""
        self._refreshed = time.monotonic()
        self._watchdog: asyncio.Task | None = None
        #: the line's product switch (``ProductSelector.select`` through ``Line.serve_products``): with it, the
        #: server has the SelectRecipe methods; (line id, product or None) -> the product the line ran before
        self.select_recipe: Callable[[str, str | None], str | None] | None = None

    # ---- the Sink protocol -----------------------------------------------------------------------------
    def wants(self, kind: str, line_id: str, camera_id: str | None) -> bool:
        return line_id in self.lines if kind == "part" else camera_id in self.cameras

    def counts_per_camera(self) -> bool:
        return True  # each Result's Sequence goes up by one per verdict: the client sees a missed one

    def send(self, verdict: Verdict) -> None:
        block = block_of(verdict.kind, verdict.line_id, verdict.camera_id)
        if verdict.kind == "part" and verdict.line_id not in self.lines:
            raise LineValueError(f"line {verdict.line_id!r} has no part result; lines: {self.lines}")
        if verdict.kind != "part" and verdict.camera_id not in self.cameras:
            raise LineValueError(f"camera {verdict.camera_id!r} has no result; cameras: {self.cameras}")
        values = result_values(verdict)
        self._call(self._write_result(block, values, verdict))

    def heartbeat(self, ready: bool) -> None:
        if ready:
            self._beats += 1
        self._call(self._write_state(STATE_OPERATIONAL if ready else STATE_PREOPERATIONAL, ready))

    def check_acks(self) -> None:
        """Once a heartbeat period: the verdicts whose ack timeout passed are recorded unacknowledged (the
        server's Ack setter records the acknowledged as they come)."""
        if self.acks is not None:
            self.acks.expire()

    def await_ack(self, kind: str, line_id: str, camera_id: str | None) -> None:
        """Before the next verdict of a block: wait until the PLC acknowledged the last one, or its time is up."""
        if self.acks is None:
            return
        block = block_of(kind, line_id, camera_id)
        self.acks.wait(block, self.acks.remaining(block))
        self.acks.expire()

    def take_acks(self) -> list[AckOutcome]:
        return self.acks.take() if self.acks is not None else []

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            self._call(self._write_state(STATE_HALTED, False), start=False)
        except SinkUnavailableError:
            pass
        self._shutdown()

    # ---- the server's thread ---------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return self.settings.opcua_endpoint

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._server is not None

    def _call(self, coro, start: bool = True):
        if start and not self.running():
            try:
                self._start()
            except SinkUnavailableError:
                coro.close()
                raise
        loop = self._loop
        if loop is None:
            coro.close()
            raise SinkUnavailableError(f"the OPC UA server at {self.endpoint} is not running")
        try:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(CALL_TIMEOUT_S)
        except (LineValueError, SinkUnavailableError):
            raise
        except Exception as exc:  # noqa: BLE001 - the server's failure is the sink's failure
            self._shutdown()
            raise SinkUnavailableError(f"the OPC UA server at {self.endpoint} failed: {exc!r}") from None

    def _start(self) -> None:
        self._shutdown()
        self._check_port()  # before the server's start-up (seconds: asyncua loads the standard address space)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="andon-opcua-server", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), loop).result(START_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001
            self._shutdown()
            raise SinkUnavailableError(f"the OPC UA server could not start at {self.endpoint}: {exc}") from None
        log.info(
            "OPC UA server listening at %s (namespace %s, ns=%d; security %s; anonymous %s)",
            self.endpoint,
            self.settings.opcua_namespace,
            self._ns,
            self.settings.opcua_security,
            "allowed" if self.settings.opcua_anonymous else "refused",
        )

    def _check_port(self) -> None:
        url = urlsplit(self.endpoint)
        try:
            with socket.socket(socket.AF_INET6 if ":" in (url.hostname or "") else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((url.hostname, url.port))
        except OSError as exc:
            raise SinkUnavailableError(f"the OPC UA server could not start at {self.endpoint}: {exc}") from None

    def _shutdown(self) -> None:
        loop, thread, server = self._loop, self._thread, self._server
        self._loop = self._thread = self._server = None
        if loop is None:
            return
        if server is not None and thread is not None and thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._stop(server), loop).result(CALL_TIMEOUT_S)
            except Exception:  # noqa: BLE001
                log.warning("the OPC UA server at %s did not stop cleanly", self.endpoint)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(CALL_TIMEOUT_S)
        if not loop.is_running():
            loop.close()

    async def _stop(self, server) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        await server.stop()

    async def _serve(self) -> None:
        from asyncua import Server, ua

        s = self.settings
        server = Server(user_manager=_Users(s))
        server.iserver.allow_remote_admin = False
        await server.init()
        server.set_endpoint(s.opcua_endpoint)
        server.set_server_name("andon")
        server.product_uri = "urn:andon"
        server.manufacturer_name = "andon"
        if s.opcua_security == "basic256sha256":
            await server.load_certificate(str(s.opcua_certificate))
            await server.load_private_key(str(s.opcua_private_key))
            await server.set_application_uri(_certificate_uri(s.opcua_certificate) or "urn:andon:server")
            server.set_security_policy(
                [
                    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                    ua.SecurityPolicyType.Basic256Sha256_Sign,
                ]
            )
        else:
            await server.set_application_uri("urn:andon:server")
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        tokens = [ua.AnonymousIdentityToken] if s.opcua_anonymous else []
        if s.opcua_username:
            tokens.append(ua.UserNameIdentityToken)
        server.set_identity_tokens(tokens)
        self._ns = await server.register_namespace(s.opcua_namespace)
        await self._build(server)
        await server.start()
        self._server = server
        self._state = ""
        self._refreshed = time.monotonic()
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    def _nid(self, name: str):
        from asyncua import ua

        return ua.NodeId(name, self._ns)

    async def _build(self, server) -> None:
        from asyncua import ua

        ns, T = self._ns, _variant_types()
        qn = lambda name: ua.QualifiedName(name, ns)  # noqa: E731
        root = await server.nodes.objects.add_object(self._nid("andon"), qn("andon"))
        await root.add_variable(
            self._nid("andon/SystemState"), qn("SystemState"), ua.Variant("", ua.VariantType.String)
        )
        await root.add_variable(self._nid("andon/Heartbeat"), qn("Heartbeat"), ua.Variant(0, ua.VariantType.UInt16))
        # the event every Result raises with each verdict (all its values in one notification)
        etype = await server.nodes.base_event_type.add_object_type(
            self._nid("andon/ResultReadyEventType"), qn("ResultReadyEventType")
        )
        for field in RESULT_FIELDS:
            await etype.add_property(
                self._nid(f"andon/ResultReadyEventType/{field}"), qn(field), ua.Variant(_initial(field), T[field])
            )
        await etype.add_property(
            self._nid("andon/ResultReadyEventType/CameraId"), qn("CameraId"), ua.Variant("", ua.VariantType.String)
        )
        await etype.add_property(
            self._nid("andon/ResultReadyEventType/LineId"), qn("LineId"), ua.Variant("", ua.VariantType.String)
        )
        blocks: list[tuple[Block, str, Any]] = []
        if self.cameras:
            folder = await root.add_folder(self._nid("andon/cameras"), qn("Cameras"))
            for camera in self.cameras:
                parent = await folder.add_object(self._nid(f"andon/cameras/{id_segment(camera)}"), qn(camera))
                blocks.append((("frame", camera), camera_base(camera), parent))
        if self.lines:
            folder = await root.add_folder(self._nid("andon/lines"), qn("Lines"))
            for line in self.lines:
                parent = await folder.add_object(self._nid(f"andon/lines/{id_segment(line)}"), qn(line))
                blocks.append((("part", line), line_base(line), parent))
        if self.select_recipe is not None:
            await self._recipe_methods(root, [p for (kind, _), _, p in blocks if kind == "part"])
        for block, base, parent in blocks:
            result = await parent.add_object(self._nid(base), qn("Result"))
            for field in RESULT_FIELDS:
                if field == "MissingCameras" and block[0] != "part":
                    continue
                initial = _initial(field)
                await result.add_variable(self._nid(f"{base}/{field}"), qn(field), ua.Variant(initial, T[field]))
            ack = await result.add_variable(self._nid(f"{base}/Ack"), qn("Ack"), ua.Variant(0, T["Ack"]))
            if self.acks is not None:
                await ack.set_writable(True)
                server.set_attribute_value_setter(ack.nodeid, self._ack_setter(block))
            self._events[block] = await server.get_event_generator(etype, result)
            self._sequence[block] = 0

    async def _recipe_methods(self, root, lines) -> None:
        """andon/SelectRecipe(LineId, Product) for any line, and andon/lines/<line>/SelectRecipe(Product) for
        each of line_cameras; Product "" is the default; the output is the product the line ran before."""
        from asyncua import ua

        def argument(name: str, what: str):
            arg = ua.Argument()
            arg.Name, arg.DataType, arg.ValueRank = name, ua.NodeId(ua.ObjectIds.String), -1
            arg.Description = ua.LocalizedText(what)
            return arg

        product = argument("Product", "the product (SKU) the line runs from now; empty: the default")
        previous = argument("Previous", "the product the line ran before (empty: the default)")
        line = argument("LineId", "the line")
        ns = self._ns
        await root.add_method(
            self._nid("andon/SelectRecipe"), ua.QualifiedName("SelectRecipe", ns), self._select, [line, product],
            [previous],
        )  # fmt: skip
        for parent in lines:
            line_id = (await parent.read_browse_name()).Name
            await parent.add_method(
                self._nid(f"andon/lines/{id_segment(line_id)}/SelectRecipe"), ua.QualifiedName("SelectRecipe", ns),
                lambda node, sku, _line=line_id: self._select(node, ua.Variant(_line, ua.VariantType.String), sku),
                [product], [previous],
            )  # fmt: skip

    def _select(self, parent, line_id, product):
        """A SelectRecipe call (in the server's thread pool: the switch writes the registry and the database)."""
        from asyncua import ua

        from andon.errors import AndonError

        line, sku = line_id.Value, product.Value
        if not isinstance(line, str) or not isinstance(sku, str):
            return ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
        try:
            before = self.select_recipe(line, sku or None)
        except AndonError as exc:
            log.warning("OPC UA: SelectRecipe(%r, %r) refused: %s", line, sku, exc)
            bad = ua.StatusCodes.BadResourceUnavailable if exc.http_status >= 500 else ua.StatusCodes.BadInvalidArgument
            return ua.StatusCode(bad)
        log.info("OPC UA: line %s now runs product %s (was %s)", line, sku or "(default)", before or "(default)")
        return [ua.Variant(before or "", ua.VariantType.String)]

    def _ack_setter(self, block: Block) -> Callable:
        def setter(node, attr, value) -> None:
            from asyncua import ua
            from asyncua.common.utils import ServiceError

            acked = value.Value.Value if value.Value is not None else None
            current = self._sequence.get(block, 0)
            if not isinstance(acked, int) or not 1 <= acked <= max(current, 0) or current == 0:
                log.warning("OPC UA: Ack %r of %s %s refused (its Sequence is %d)", acked, *block, current)
                raise ServiceError(ua.StatusCodes.BadOutOfRange)
            node.attributes[attr].value = value
            if self.acks is not None and not self.acks.acked(block, acked):
                log.info("OPC UA: Ack %d of %s %s names no verdict waiting for one", acked, *block)

        return setter

    async def _write(self, name: str, value: Any, vtype, now: dt.datetime) -> None:
        from asyncua import ua

        dv = ua.DataValue(ua.Variant(value, vtype), SourceTimestamp=now, ServerTimestamp=now)
        status = await self._server.write_attribute_value(self._nid(name), dv)
        if status is not None and not status.is_good():
            raise LineValueError(f"the OPC UA server refused {value!r} for {name}: {status.name}")

    async def _write_result(self, block: Block, values: dict[str, Any], verdict: Verdict) -> None:
        """Every variable of the block, then Sequence, then the event: nothing in between yields the loop (so
        that the Ack the client writes on seeing them finds the verdict waiting for it)."""
        T = _variant_types()
        base = line_base(block[1]) if block[0] == "part" else camera_base(block[1])
        now = dt.datetime.now(dt.timezone.utc)
        for field in RESULT_FIELDS:
            if field == "Sequence" and self.acks is not None:
                self.acks.written(verdict, values["Sequence"])  # the rest of the block is in: now it counts
            if field in values:
                await self._write(f"{base}/{field}", values[field], T[field], now)
        self._sequence[block] = values["Sequence"]
        gen = self._events[block]
        for field in RESULT_FIELDS:
            setattr(gen.event, field, values.get(field, [] if field == "MissingCameras" else None))
        gen.event.CameraId = block[1] if block[0] == "frame" else ""
        gen.event.LineId = block[1] if block[0] == "part" else ""
        gen.event.Severity = 100 if values["Decision"] == "pass" else 500
        await gen.trigger(time_attr=now, message=f"{block[1]} {values['Sequence']} {values['Decision']}")

    async def _write_state(self, state: str, beat: bool) -> None:
        from asyncua import ua

        now = dt.datetime.now(dt.timezone.utc)
        self._refreshed = time.monotonic()
        if beat:
            await self._write("andon/Heartbeat", wrap16(self._beats), ua.VariantType.UInt16, now)
        if state != self._state:
            await self._write("andon/SystemState", state, ua.VariantType.String, now)
            if self._state:
                log.info("OPC UA system state: %s -> %s", self._state, state)
            self._state = state

    async def _watch(self) -> None:
        """The dispatcher stalled (database down, a bug): the system state says Error, the heartbeat stands."""
        from asyncua import ua

        period = self.settings.line_heartbeat_s
        while True:
            await asyncio.sleep(period)
            if self._state != STATE_ERROR and time.monotonic() - self._refreshed > WATCHDOG_PERIODS * period:
                log.warning("OPC UA: the dispatcher has not refreshed the system state; it is now Error")
                await self._write(
                    "andon/SystemState", STATE_ERROR, ua.VariantType.String, dt.datetime.now(dt.timezone.utc)
                )
                self._state = STATE_ERROR


def _initial(field: str) -> Any:
    if field in ("Sequence", "ResultCode", "Flags"):
        return 0
    if field == "Late":
        return False
    if field == "LatencyMs":
        return 0.0
    if field == "ReceivedAt":
        return _NULL_TIME
    if field == "MissingCameras":
        return []
    return ""


def _certificate_uri(path) -> str | None:
    """The application URI in the certificate's subject alternative name (clients compare the two)."""
    try:
        from cryptography import x509

        data = open(path, "rb").read()  # noqa: SIM115
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        return uris[0] if uris else None
    except Exception:  # noqa: BLE001 - no URI: the default one
        return None
