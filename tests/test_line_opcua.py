"""andon's OPC UA server (the opcua line sink) against a real asyncua client, as a PLC or SCADA would use it:
results in order with the part id, the event carrying a whole verdict, the sequence across a restart, late ->
reject, refused values and writes, the PLC's acknowledgement on and off, the system state and heartbeat, a
server that cannot listen counted as a failed sink, and the security settings."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

from andon.errors import ConfigError
from andon.service.line.opcua import FLAG_LATE, camera_base, line_base
from andon.service.runtime import Models
from line_support import add_unsendable_row, free_port, wait_for
from service_support import PASS, REJECT, REVIEW, client_for, jpeg, post_frame, settings_for

asyncua = pytest.importorskip("asyncua")
from asyncua import ua  # noqa: E402
from asyncua.sync import Client  # noqa: E402

NS = "urn:andon:test"


def opcua_settings(tmp_path, model, port, **changes):
    base = dict(
        line_sinks=["opcua"],
        opcua_endpoint=f"opc.tcp://127.0.0.1:{port}/andon",
        opcua_namespace=NS,
        opcua_cameras=["top", "side"],
        opcua_anonymous=True,
        line_deadline_ms=60_000,
        line_heartbeat_s=0.05,
        line_retry_initial_s=0.02,
        line_retry_max_s=0.2,
    )
    return settings_for(tmp_path, model, **{**base, **changes})


class Events:
    """The client's subscription handler: every ResultReady event and every Sequence change, in order."""

    def __init__(self) -> None:
        self.events: list = []
        self.changes: list[tuple[str, object]] = []
        self.lock = threading.Lock()

    def event_notification(self, event) -> None:
        with self.lock:
            self.events.append(event)

    def datachange_notification(self, node, value, data) -> None:
        with self.lock:
            self.changes.append((node.nodeid.Identifier, value))

    def got(self) -> list:
        with self.lock:
            return list(self.events)


class Plc:
    """An asyncua client of andon's server: resolves the namespace by its URI, subscribes to the events of
    the Results it is told, reads and writes nodes by their documented string ids."""

    def __init__(self, port: int, bases: list[str], username: str | None = None, password: str | None = None):
        self.client = Client(f"opc.tcp://127.0.0.1:{port}/andon", timeout=5)
        try:
            if username is not None:
                self.client.set_user(username)
                self.client.set_password(password)
            self.client.connect()
            self.ns = self.client.get_namespace_index(NS)
            self.handler = Events()
            self.sub = self.client.create_subscription(20, self.handler)
            etype = self.node("andon/ResultReadyEventType")
            for base in bases:
                self.sub.subscribe_events(self.node(base), etype)
            self.sub.subscribe_data_change([self.node(f"{b}/Sequence") for b in bases])
        except BaseException:
            # the sync client's own event-loop thread is not a daemon: a refused connect must stop it, or pytest
            # waits for it at exit forever
            self.client.tloop.stop()
            raise

    def node(self, name: str):
        return self.client.get_node(f"ns={self.ns};s={name}")

    def read(self, name: str):
        return self.node(name).read_value()

    def block(self, base: str) -> dict:
        """The Result's variables in one Read request (one consistent snapshot)."""
        names = ["Sequence", "ResultCode", "Decision", "ModelDecision", "Flags", "PartId", "Late", "LatencyMs"]
        values = self.client.read_values([self.node(f"{base}/{n}") for n in names])
        return dict(zip(names, values))

    def close(self) -> None:
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001 - the server may be gone already
            pass


@pytest.fixture
def port():
    return free_port()


def _started(client):
    wait_for(lambda: client.app.state.ctx.pipeline.line.workers[0].beats >= 1, what="the OPC UA server to start")


def test_verdicts_reach_their_results_in_order_with_the_part_id_and_the_client_cannot_write_them(
    tmp_path, tiny_model_path, port
):
    with client_for(opcua_settings(tmp_path, tiny_model_path, port)) as client:
        _started(client)
        plc = Plc(port, [camera_base("top"), camera_base("side")])
        try:
            sent = [(PASS, "top", "P-0"), (REVIEW, "side", "P-1"), (REJECT, "top", "P-2"), (PASS, "top", "P-3")]
            for i, (value, camera, part) in enumerate(sent):
                r = post_frame(client, jpeg(value, noise=i), camera=camera, part=part, serial=f"S{i}")
                assert r.status_code == 201, r.text
            events = wait_for(lambda: len(plc.handler.got()) >= 4 and plc.handler.got(), what="4 result events")
            top = plc.block(camera_base("top"))
            side = plc.block(camera_base("side"))
            serial = plc.read(f"{camera_base('top')}/Serial")
            state = plc.read("andon/SystemState")
            # the Results are andon's: a client cannot write them; without acks, Ack is read-only too
            with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied|BadNotWritable"):
                plc.node(f"{camera_base('top')}/Decision").write_value(ua.Variant("pass", ua.VariantType.String))
            with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied|BadNotWritable"):
                plc.node(f"{camera_base('top')}/Ack").write_value(ua.Variant(3, ua.VariantType.UInt32))
            assert plc.read(f"{camera_base('top')}/Decision") == "pass"
        finally:
            plc.close()
        assert all(a is None for _, a in _ack_rows(client))  # no acknowledgement expected, none recorded
    assert [(e.CameraId, e.Sequence, e.PartId, e.Decision) for e in events] == [
        ("top", 1, "P-0", "pass"),
        ("side", 1, "P-1", "review"),
        ("top", 2, "P-2", "reject"),
        ("top", 3, "P-3", "pass"),
    ]
    assert all(e.ResultCode == {"pass": 1, "review": 2, "reject": 3}[e.Decision] for e in events)
    assert all(e.Late is False and e.LatencyMs > 0 and e.ModelVersion for e in events)
    assert top["Sequence"] == 3 and top["PartId"] == "P-3" and top["Decision"] == "pass" and top["ResultCode"] == 1
    assert side["Sequence"] == 1 and side["PartId"] == "P-1" and side["ResultCode"] == 2
    assert serial == "S3" and state == "Operational"


def test_a_server_that_cannot_listen_keeps_the_verdicts_late_ones_reject_and_a_restart_numbers_on(
    tmp_path, tiny_model_path, port
):
    from andon.service.line.tables import LineOutbox

    blocker = socket.socket()  # the endpoint is taken: the server cannot start, the sink counts as down
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    settings = opcua_settings(tmp_path, tiny_model_path, port, line_deadline_ms=200)
    with client_for(settings) as client:
        worker = client.app.state.ctx.pipeline.line.workers[0]
        wait_for(lambda: worker.failing, what="the sink to fail")
        assert "could not start" in worker.failing
        assert 'andon_line_sink_up{sink="opcua"} 0.0' in client.get("/metrics").text
        r = post_frame(client, jpeg(PASS), camera="top", part="LATE-1")
        assert r.status_code == 201 and r.json()["decision"] == "pass"
        add_unsendable_row(client, "opcua", "top")  # a row no sink can send (a decision with no code)
        assert post_frame(client, jpeg(PASS, noise=2), camera="top", part="LATE-2").status_code == 201
        time.sleep(0.3)  # past the deadline
        blocker.close()
        wait_for(lambda: worker.delivered == 3, what="the backlog once the server listens")
        assert 'andon_line_sink_up{sink="opcua"} 1.0' in client.get("/metrics").text
        plc = Plc(port, [camera_base("top")])
        try:
            top = plc.block(camera_base("top"))
        finally:
            plc.close()
        with client.app.state.ctx.sessions() as session:
            bad = session.query(LineOutbox).filter_by(part_id="V-X").one()
    assert top["Sequence"] == 2 and top["PartId"] == "LATE-2"  # the refused row spent no number
    assert top["Decision"] == "reject" and top["ResultCode"] == 3 and top["Late"] is True
    assert top["Flags"] & FLAG_LATE and top["ModelDecision"] == "pass"
    assert bad.sequence is None and "'maybe' has no result code" in bad.last_error

    with client_for(settings) as client:  # andon restarts: a new server on the same endpoint
        _started(client)
        plc = Plc(port, [camera_base("top")])
        try:
            assert plc.read(f"{camera_base('top')}/Sequence") == 0  # nothing since the start
            assert post_frame(client, jpeg(REJECT), camera="top", part="R-3").status_code == 201
            events = wait_for(plc.handler.got, what="the verdict after the restart")
        finally:
            plc.close()
    assert [(e.Sequence, e.PartId, e.Decision) for e in events] == [(3, "R-3", "reject")]


def _ack_rows(client):
    from andon.service.line.tables import LineOutbox

    with client.app.state.ctx.sessions() as session:
        return [
            (r.part_id, (r.detail or {}).get("ack"))
            for r in session.query(LineOutbox).order_by(LineOutbox.id)
            if r.delivered_at is not None
        ]


def test_with_acks_on_a_block_waits_for_the_plc_and_records_what_it_acknowledged(tmp_path, tiny_model_path, port):
    settings = opcua_settings(tmp_path, tiny_model_path, port, opcua_ack_timeout_ms=300)
    with client_for(settings) as client:
        _started(client)
        plc = Plc(port, [camera_base("top")])
        ack = plc.node(f"{camera_base('top')}/Ack")
        try:
            with pytest.raises(ua.UaStatusCodeError, match="BadTypeMismatch"):
                ack.write_value(ua.Variant("1", ua.VariantType.String))
            with pytest.raises(ua.UaStatusCodeError, match="BadOutOfRange"):  # no verdict 1 yet
                ack.write_value(ua.Variant(1, ua.VariantType.UInt32))
            assert post_frame(client, jpeg(PASS), camera="top", part="A-1").status_code == 201
            first = wait_for(plc.handler.got, what="verdict 1")[0]
            with pytest.raises(ua.UaStatusCodeError, match="BadOutOfRange"):  # verdict 2 was never written
                ack.write_value(ua.Variant(2, ua.VariantType.UInt32))
            assert post_frame(client, jpeg(PASS, noise=1), camera="top", part="A-2").status_code == 201
            time.sleep(0.1)  # verdict 2 waits: the PLC has not acknowledged 1
            assert len(plc.handler.got()) == 1
            ack.write_value(ua.Variant(first.Sequence, ua.VariantType.UInt32))
            events = wait_for(lambda: len(plc.handler.got()) == 2 and plc.handler.got(), what="verdict 2")
            # verdict 2 is never acknowledged: verdict 3 goes out once its ack timeout is up
            t0 = time.monotonic()
            assert post_frame(client, jpeg(REJECT, noise=2), camera="top", part="A-3").status_code == 201
            wait_for(lambda: len(plc.handler.got()) == 3, what="verdict 3")
            waited = time.monotonic() - t0
            ack.write_value(ua.Variant(3, ua.VariantType.UInt32))
            rows = wait_for(lambda: all(a for _, a in _ack_rows(client)) and _ack_rows(client), what="ack records")
            metrics = client.get("/metrics").text
        finally:
            plc.close()
    assert [e.PartId for e in events] == ["A-1", "A-2"]
    assert waited >= 0.25  # the ack timeout (300 ms, less the time since verdict 2 went out)
    assert [(p, a["acked"]) for p, a in rows] == [("A-1", True), ("A-2", False), ("A-3", True)]
    assert 'andon_line_acks_total{outcome="acked",sink="opcua"} 2.0' in metrics
    assert 'andon_line_acks_total{outcome="unacked",sink="opcua"} 1.0' in metrics


def test_part_results_and_the_system_state_follow_the_model(tmp_path, tiny_model_path, port):
    settings = opcua_settings(tmp_path, None, port, opcua_cameras=[], line_cameras={"L1": ["top", "side"]})
    with client_for(settings) as client:  # started without a model
        ctx = client.app.state.ctx
        worker = ctx.pipeline.line.workers[0]
        wait_for(lambda: worker.beats >= 2, what="2 heartbeat periods")
        plc = Plc(port, [line_base("L1")])
        try:
            assert plc.read("andon/SystemState") == "Preoperational" and plc.read("andon/Heartbeat") == 0
            ctx.runtime.bootstrap(tiny_model_path)
            ctx.runtime.sync(force=True)
            wait_for(lambda: plc.read("andon/SystemState") == "Operational", what="Operational")
            beat = plc.read("andon/Heartbeat")
            wait_for(lambda: plc.read("andon/Heartbeat") != beat, what="the heartbeat to move")
            assert post_frame(client, jpeg(PASS), camera="top", part="Q-1").status_code == 201
            assert post_frame(client, jpeg(REJECT, noise=1), camera="side", part="Q-1").status_code == 201
            part = wait_for(plc.handler.got, what="the part verdict")[0]
            ctx.runtime._models = Models(None, None)  # the model is gone
            wait_for(lambda: plc.read("andon/SystemState") == "Preoperational", what="Preoperational")
            beat = plc.read("andon/Heartbeat")
            time.sleep(0.3)
            assert plc.read("andon/Heartbeat") == beat  # the heartbeat stands
            ctx.runtime.sync(force=True)
            wait_for(lambda: plc.read("andon/SystemState") == "Operational", what="Operational again")

            def database_down():
                from sqlalchemy.exc import OperationalError

                raise OperationalError("SELECT", {}, Exception("the database is down"))

            worker._pending = database_down  # the dispatcher cannot read the outbox: it refreshes nothing
            wait_for(lambda: plc.read("andon/SystemState") == "Error", what="Error after 3 periods")
            beat = plc.read("andon/Heartbeat")
            time.sleep(0.2)
            assert plc.read("andon/Heartbeat") == beat
        finally:
            plc.close()
    assert (part.LineId, part.Sequence, part.PartId, part.Decision) == ("L1", 1, "Q-1", "reject")
    assert part.MissingCameras == []


def test_security_settings_are_checked_and_credentials_enforced(tmp_path, tiny_model_path, port):
    for changes, words in [
        (dict(opcua_anonymous=False), "opcua_username + opcua_password, or opcua_anonymous"),
        (dict(opcua_username="plc"), "together"),
        (dict(opcua_security="basic256sha256"), "needs opcua_certificate"),
        (dict(opcua_endpoint="http://127.0.0.1:4840"), "opc.tcp://host:port"),
        (dict(opcua_endpoint="opc.tcp://127.0.0.1:99999"), "port 1 to 65535"),
        (dict(opcua_namespace="andon line"), "namespace is a URI"),
        (dict(opcua_cameras=[]), "no camera has a Result"),
        (dict(opcua_cameras=["bad camera"]), "is not a camera id"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            opcua_settings(tmp_path, tiny_model_path, port, **changes)
    settings = opcua_settings(
        tmp_path, tiny_model_path, port, opcua_anonymous=False, opcua_username="plc", opcua_password="s3cret"
    )
    assert "s3cret" not in repr(settings)
    with client_for(settings) as client:
        _started(client)
        with pytest.raises(Exception, match="BadIdentityTokenInvalid|BadUserAccessDenied|BadIdentityTokenRejected"):
            Plc(port, [camera_base("top")])  # anonymous: refused
        with pytest.raises(Exception, match="BadIdentityTokenInvalid|BadUserAccessDenied|BadIdentityTokenRejected"):
            Plc(port, [camera_base("top")], username="plc", password="wrong")
        plc = Plc(port, [camera_base("top")], username="plc", password="s3cret")
        try:
            assert plc.read("andon/SystemState") == "Operational"
        finally:
            plc.close()


def test_select_recipe_switches_the_lines_product_and_refuses_an_unknown_one(tmp_path, tiny_model_path, port):
    from andon.inspect.card import ThresholdBand, Thresholds
    from tiny_onnx import tiny_card, write_tiny_model

    strict = Thresholds(defect=ThresholdBand(pass_below=0.05, reject_at=0.4), source="manual").model_dump()
    sku_a = write_tiny_model(tmp_path / "a1.onnx", tiny_card(version="a-1", thresholds=strict))
    settings = opcua_settings(tmp_path, tiny_model_path, port, opcua_cameras=[], line_cameras={"L1": ["top"]})
    with client_for(settings) as client:
        ctx = client.app.state.ctx
        ctx.registry.add_file(sku_a)
        ctx.runtime.promote("a-1", product="SKU-A")
        _started(client)
        plc = Plc(port, [line_base("L1")])
        try:
            line = plc.node("andon/lines/L1")
            method = plc.node("andon/lines/L1/SelectRecipe")
            before = line.call_method(method, ua.Variant("SKU-A", ua.VariantType.String))
            assert ctx.products.current("L1") == "SKU-A"
            assert post_frame(client, jpeg(PASS), camera="top", line="L1", part="R-1").json()["model_version"] == "a-1"
            with pytest.raises(ua.UaStatusCodeError, match="BadInvalidArgument"):
                line.call_method(method, ua.Variant("SKU-X", ua.VariantType.String))  # no model for it
            assert ctx.products.current("L1") == "SKU-A"
            root = plc.node("andon")  # any line, by id; "" is the default product
            back = root.call_method(
                plc.node("andon/SelectRecipe"),
                ua.Variant("L1", ua.VariantType.String),
                ua.Variant("", ua.VariantType.String),
            )
            assert ctx.products.current("L1") is None
        finally:
            plc.close()
        switches = [(r.from_product, r.to_product, r.source) for r in ctx.products.switches(line_id="L1")]
    assert (before, back) == ("", "SKU-A")
    assert switches == [("SKU-A", None, "opcua"), (None, "SKU-A", "opcua")]


def _certificate(folder, name: str, uri: str, use):
    """A self-signed application certificate (DER) and its key (PEM), as asyncua makes them."""
    import asyncio

    from asyncua.crypto.cert_gen import setup_self_signed_certificate

    key, cert = folder / f"{name}-key.pem", folder / f"{name}-cert.der"
    asyncio.run(setup_self_signed_certificate(key, cert, uri, "localhost", [use], {"organizationName": "test"}))
    return cert, key


def test_basic256sha256_offers_only_secure_endpoints_and_takes_the_password_over_them(tmp_path, tiny_model_path, port):
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
    from cryptography.x509.oid import ExtendedKeyUsageOID

    server_cert, server_key = _certificate(tmp_path, "server", "urn:andon:test:server", ExtendedKeyUsageOID.SERVER_AUTH)
    client_cert, client_key = _certificate(tmp_path, "client", "urn:test:plc", ExtendedKeyUsageOID.CLIENT_AUTH)
    with pytest.raises(ConfigError, match="opcua_private_key .* is not a file"):
        opcua_settings(tmp_path, tiny_model_path, port, opcua_security="basic256sha256",
                       opcua_certificate=server_cert, opcua_private_key=tmp_path / "missing.pem")  # fmt: skip
    settings = opcua_settings(
        tmp_path, tiny_model_path, port, opcua_anonymous=False, opcua_username="plc", opcua_password="s3cret",
        opcua_security="basic256sha256", opcua_certificate=server_cert, opcua_private_key=server_key,
    )  # fmt: skip
    with client_for(settings) as client:
        _started(client)
        with pytest.raises(Exception):  # noqa: B017 - no unencrypted endpoint to open a session on
            Plc(port, [camera_base("top")], username="plc", password="s3cret")
        secure = Client(f"opc.tcp://127.0.0.1:{port}/andon", timeout=5)
        secure.application_uri = "urn:test:plc"
        secure.set_security(
            SecurityPolicyBasic256Sha256, str(client_cert), str(client_key), server_certificate=str(server_cert)
        )
        secure.set_user("plc")
        secure.set_password("s3cret")
        secure.connect()
        try:
            endpoints = secure.get_endpoints()
            ns = secure.get_namespace_index(NS)
            state = secure.get_node(f"ns={ns};s=andon/SystemState").read_value()
        finally:
            secure.disconnect()
    assert state == "Operational"
    assert {e.SecurityPolicyUri.rsplit("#", 1)[1] for e in endpoints} == {"Basic256Sha256"}
    assert {e.SecurityMode for e in endpoints} == {ua.MessageSecurityMode.Sign, ua.MessageSecurityMode.SignAndEncrypt}
