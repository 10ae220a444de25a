"""The MQTT sink (paho-mqtt): one connection to the plant's broker, reused; QoS 1 (or 2) verdicts.

Topics (docs/line.md): ``<prefix>/<line>/<camera>/verdict`` for each frame verdict (JSON,
``Verdict.as_json``), ``<prefix>/<line>/verdict`` for the part verdicts of a line in ``line_cameras``, and
``<prefix>/status``, retained: ``ready`` / ``not ready`` while connected, and the broker's will ``offline``
when the service's connection dies. A ``/`` inside a line or camera id is written ``%2F`` so that an id is
one topic level. Alarms (``line.alarms``): ``<prefix>/<line>/alarm``, retained, the line's active alarms; and
``<prefix>/<line>/alarm/event``, each raise and clear.

A publish counts as delivered when the broker's PUBACK (QoS 2: PUBCOMP) arrived within ``mqtt_timeout_s``.
When it did not, the connection is dropped with whatever paho still queued, so that nothing is sent later
behind the dispatcher's back (a verdict resent after its deadline must go out as reject, by the dispatcher):
the retry goes out on a new connection with the same sequence number. Delivery is at least once; a consumer
that sees a sequence number twice keeps the later message.
"""

from __future__ import annotations

import logging
import threading

from andon.service.line.alarm_model import STATE, AlarmMessage
from andon.service.line.errors import SinkUnavailableError
from andon.service.line.messages import Verdict
from andon.service.settings import Settings

log = logging.getLogger("andon.service.line")


def topic_level(value: str) -> str:
    return value.replace("%", "%25").replace("/", "%2F")


def verdict_topic(prefix: str, line_id: str, camera_id: str | None) -> str:
    """A camera's verdicts: <prefix>/<line>/<camera>/verdict; the line's part verdicts: <prefix>/<line>/verdict."""
    if camera_id is None:
        return f"{prefix}/{topic_level(line_id)}/verdict"
    return f"{prefix}/{topic_level(line_id)}/{topic_level(camera_id)}/verdict"


class MqttSink:
    name = "mqtt"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.status_topic = f"{settings.mqtt_topic_prefix}/status"
        self._client = None
        self._connected = threading.Event()
        self._status: str | None = None

    def wants(self, kind: str, line_id: str, camera_id: str | None) -> bool:
        return True

    def counts_per_camera(self) -> bool:
        return False  # one sequence across the sink's topics: a subscriber to <prefix>/# sees every gap

    # ---- the connection --------------------------------------------------------------------------------
    def _connect(self):
        if self._client is not None and self._client.is_connected():
            return self._client
        self._drop()
        import paho.mqtt.client as mqtt

        s = self.settings
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=s.mqtt_client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.connect_timeout = s.mqtt_timeout_s
        client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        client.max_inflight_messages_set(1)  # one verdict in flight: the order on the wire is the outbox order
        connected = self._connected
        connected.clear()
        client.on_connect = lambda c, userdata, flags, rc, props=None: connected.set() if not rc.is_failure else None
        client.on_disconnect = lambda c, userdata, flags, rc, props=None: connected.clear()
        try:
            client.connect(s.mqtt_host, s.mqtt_port, keepalive=s.mqtt_keepalive_s)
        except (OSError, ValueError) as exc:
            where = f"{s.mqtt_host}:{s.mqtt_port}"
            raise SinkUnavailableError(f"the MQTT broker at {where} is not reachable: {exc}") from None
        client.loop_start()
        if not connected.wait(s.mqtt_timeout_s):
            client.loop_stop()
            client.disconnect()
            raise SinkUnavailableError(
                f"the MQTT broker at {s.mqtt_host}:{s.mqtt_port} did not accept the connection within "
                f"{s.mqtt_timeout_s} s"
            )
        self._client = client
        self._status = None  # publish the status again on the new connection
        log.info("connected to the MQTT broker at %s:%d", s.mqtt_host, s.mqtt_port)
        return client

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.disconnect()
            finally:
                client.loop_stop()

    def _publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False) -> None:
        client = self._connect()
        s = self.settings
        info = client.publish(topic, payload, qos=qos, retain=retain)
        try:
            info.wait_for_publish(s.mqtt_timeout_s)
        except (RuntimeError, ValueError) as exc:
            self._drop()
            where = f"{s.mqtt_host}:{s.mqtt_port}"
            raise SinkUnavailableError(f"the MQTT broker at {where} lost the message: {exc}") from None
        if not info.is_published():
            self._drop()
            raise SinkUnavailableError(
                f"the MQTT broker at {s.mqtt_host}:{s.mqtt_port} did not acknowledge a message on {topic} "
                f"within {s.mqtt_timeout_s} s"
            )

    # ---- what the dispatcher calls ---------------------------------------------------------------------
    def send(self, verdict: Verdict) -> None:
        topic = verdict_topic(self.settings.mqtt_topic_prefix, verdict.line_id, verdict.camera_id)
        self._publish(topic, verdict.as_json(), qos=self.settings.mqtt_qos)

    def alarm(self, message: AlarmMessage) -> None:
        """The line's active alarms, retained, on <prefix>/<line>/alarm; then a raise or clear on .../alarm/event."""
        topic = f"{self.settings.mqtt_topic_prefix}/{topic_level(message.line_id)}/alarm"
        self._publish(topic, message.state_json(), qos=self.settings.mqtt_qos, retain=True)
        if message.event != STATE:
            self._publish(f"{topic}/event", message.event_json(), qos=self.settings.mqtt_qos)

    def heartbeat(self, ready: bool) -> None:
        status = "ready" if ready else "not ready"
        if status != self._status or self._client is None or not self._client.is_connected():
            self._publish(self.status_topic, status.encode(), qos=1, retain=True)
            self._status = status

    def close(self) -> None:
        if self._client is not None and self._client.is_connected():
            try:
                self._publish(self.status_topic, b"offline", qos=1, retain=True)
            except SinkUnavailableError:
                pass
        self._drop()
