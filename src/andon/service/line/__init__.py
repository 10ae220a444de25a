"""The line: each frame verdict to the sinks the plant configures (MQTT, the PLC over Modbus TCP), through an
outbox in the database, in order, with the deadline rule and a heartbeat the PLC watches (docs/line.md)."""

from andon.service.line.dispatcher import Line, build_line

__all__ = ["Line", "build_line"]
