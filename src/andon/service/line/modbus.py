"""The Modbus TCP sink: verdicts into the PLC's holding registers, and the heartbeat it watches.

One client, one TCP connection, reused for every write (reconnected after a failure). Per camera a block
of holding registers starting at ``modbus_blocks[camera]`` (docs/line.md):

======  =======================================================================================
offset  value
======  =======================================================================================
+0      sequence of this block: 1..65535, then 1 again, one step per verdict; written last, after the
        rest of the block (its change tells the PLC the block is complete). 0: nothing delivered yet
+1      result: 1 pass, 2 review, 3 reject (0 is never written)
+2      flags: bit 0 late (the deadline passed: result is reject), bit 1 the part id did not fit
        the echo registers (the echo is empty; the result stands), bit 2 (part blocks) a camera
        had not reported the part by the deadline (result is reject)
+3      length of the part id echo in characters (0: none)
+4..    the part id, ASCII, two characters per register (high byte first), zero-padded
======  =======================================================================================

The heartbeat register counts 1..65535 (then 1 again), one step every ``line_heartbeat_s`` while the
service has a model and this sink takes writes. A line of ``line_cameras`` with a ``modbus_part_blocks`` entry
gets its part verdicts in a block of the same layout.
"""

from __future__ import annotations

import logging
import os
import time

from andon.service.line.acks import AckOutcome, AckTracker, Block, block_of
from andon.service.line.alarm_model import ALARM_ROW, AlarmMessage
from andon.service.line.errors import LineValueError, SinkUnavailableError
from andon.service.line.messages import Verdict, result_code
from andon.service.settings import MODBUS_BLOCK_HEAD, Settings

log = logging.getLogger("andon.service.line")

FLAG_LATE = 1
FLAG_PART_ID_CUT = 2
FLAG_INCOMPLETE = 4


def wrap16(counter: int) -> int:
    """A counter as a register value: 1..65535, never 0 (0 means 'nothing yet')."""
    if counter < 1:
        raise LineValueError(f"counters start at 1; got {counter}")
    return (counter - 1) % 0xFFFF + 1


def encode_part_id(part_id: str | None, registers: int) -> tuple[list[int], bool]:
    """(the echo registers, whether the id fitted). An id that does not fit is not cut: a cut echo would
    name another part; the registers stay zero and the flag says why."""
    if not part_id:
        return [0] * registers, True
    if len(part_id) > 2 * registers or not part_id.isascii() or not part_id.isprintable():
        return [0] * registers, False
    raw = part_id.encode("ascii").ljust(2 * registers, b"\0")
    return [(raw[i] << 8) | raw[i + 1] for i in range(0, len(raw), 2)], True


def decode_part_id(values: list[int]) -> str:
    """The inverse of ``encode_part_id`` (what a PLC program does with the echo)."""
    raw = b"".join(v.to_bytes(2, "big") for v in values)
    return raw.rstrip(b"\0").decode("ascii")


def encode_block(verdict: Verdict, part_id_registers: int) -> list[int]:
    """The whole block, offset 0 (the sequence) first; every value checked to fit its register."""
    echo, fitted = encode_part_id(verdict.part_id, part_id_registers)
    flags = (
        (FLAG_LATE if verdict.late else 0)
        | (0 if fitted else FLAG_PART_ID_CUT)
        | (FLAG_INCOMPLETE if verdict.missing else 0)
    )
    length = len(verdict.part_id) if verdict.part_id and fitted else 0
    values = [wrap16(verdict.sequence), result_code(verdict.decision), flags, length, *echo]
    if len(values) != MODBUS_BLOCK_HEAD + part_id_registers or any(not 0 <= v <= 0xFFFF for v in values):
        raise LineValueError(f"a verdict block must be {MODBUS_BLOCK_HEAD + part_id_registers} 16-bit values")
    return values


class ModbusSink:
    name = "modbus"

    def __init__(self, settings: Settings) -> None:
        from pymodbus.client import ModbusTcpClient

        self.settings = settings
        self.blocks = dict(settings.modbus_blocks)
        self.part_blocks = dict(settings.modbus_part_blocks)
        self.alarm_registers = dict(settings.modbus_alarm_registers)
        self._alarm_bits: dict[str, int] = {}  # the lines' alarm bits as last written, rewritten with each beat
        self._client = ModbusTcpClient(
            settings.modbus_host, port=settings.modbus_port, timeout=settings.modbus_timeout_s, retries=0
        )
        # the PLC's acknowledgement (line/acks.py): a block with an ack register waits for it before its next verdict
        self.ack_registers = dict(settings.modbus_ack_registers)
        self.acks = AckTracker(settings.modbus_ack_timeout_ms) if self.ack_registers else None
        # a restart does not start at the value the PLC saw last (it would look like one missed beat more)
        self._beats = int.from_bytes(os.urandom(2), "big")

    def wants(self, kind: str, line_id: str, camera_id: str | None) -> bool:
        """Only cameras (and lines, for part verdicts) with a block send verdicts to the PLC."""
        if kind == ALARM_ROW:
            return line_id in self.alarm_registers
        return line_id in self.part_blocks if kind == "part" else camera_id in self.blocks

    def counts_per_camera(self) -> bool:
        return True  # each block's sequence goes up by one per verdict: the PLC sees a missed one

    def send(self, verdict: Verdict) -> None:
        if verdict.kind == "part":
            start = self.part_blocks.get(verdict.line_id)
            if start is None:
                raise LineValueError(f"line {verdict.line_id!r} has no part block; lines: {sorted(self.part_blocks)}")
        else:
            start = self.blocks.get(verdict.camera_id or "")
            if start is None:
                raise LineValueError(f"camera {verdict.camera_id!r} has no block; cameras: {sorted(self.blocks)}")
        values = encode_block(verdict, self.settings.modbus_part_id_registers)
        self._write(start + 1, values[1:])  # result, flags, part id first ...
        self._write(start, values[:1])  # ... then the sequence: the block is complete
        if self.acks is not None and self._ack_register(block_of(verdict.kind, verdict.line_id, verdict.camera_id)):
            self.acks.written(verdict, values[0])

    def alarm(self, message: AlarmMessage) -> None:
        """The line's alarm register: a bit per active alarm kind (``alarm_model.BITS``)."""
        register = self.alarm_registers.get(message.line_id)
        if register is None:
            raise LineValueError(
                f"line {message.line_id!r} has no alarm register; lines: {sorted(self.alarm_registers)}"
            )
        self._write(register, [message.bits])
        self._alarm_bits[message.line_id] = message.bits

    def heartbeat(self, ready: bool) -> None:
        for line_id, bits in self._alarm_bits.items():  # a PLC that restarted gets its alarm bits back
            self._write(self.alarm_registers[line_id], [bits])
        if not ready:
            return  # the register stops changing: the PLC's watchdog trips
        self._beats += 1
        self._write(self.settings.modbus_heartbeat_register, [wrap16(self._beats)])

    # ---- the PLC's acknowledgement ---------------------------------------------------------------------
    def _ack_register(self, block: Block) -> int | None:
        kind, name = block
        if name not in (self.part_blocks if kind == "part" else self.blocks):
            return None
        return self.ack_registers.get(name)

    def await_ack(self, kind: str, line_id: str, camera_id: str | None) -> None:
        """Before the block's next verdict: read its ack register (FC3) until the PLC has written the last
        verdict's sequence there, or the ack timeout is up."""
        if self.acks is None:
            return
        block = block_of(kind, line_id, camera_id)
        register = self._ack_register(block)
        while register is not None and self.acks.waiting_on(block) is not None:
            if self.acks.acked(block, self._read(register)):
                return
            left = self.acks.remaining(block)
            if left <= 0:
                break
            time.sleep(min(0.005, left))
        self.acks.expire()

    def check_acks(self) -> None:
        """Once a heartbeat period: the blocks still waiting read once, the overdue recorded unacknowledged."""
        if self.acks is None:
            return
        for block, _ in self.acks.waiting_blocks():
            register = self._ack_register(block)
            if register is not None:
                self.acks.acked(block, self._read(register))
        self.acks.expire()

    def take_acks(self) -> list[AckOutcome]:
        return self.acks.take() if self.acks is not None else []

    def _read(self, address: int) -> int:
        from pymodbus.exceptions import ModbusException

        unit = self.settings.modbus_unit
        where = f"the PLC at {self.settings.modbus_host}:{self.settings.modbus_port}"
        try:
            answer = self._client.read_holding_registers(address, count=1, device_id=unit)
        except (ModbusException, OSError) as exc:
            self._client.close()
            raise SinkUnavailableError(f"{where} did not answer the read of register {address}: {exc}") from None
        if answer.isError():
            raise SinkUnavailableError(f"{where} refused the read of register {address} (unit {unit}): {answer}")
        return int(answer.registers[0])

    def _write(self, address: int, values: list[int]) -> None:
        from pymodbus.exceptions import ModbusException

        unit = self.settings.modbus_unit
        try:
            if len(values) == 1:
                answer = self._client.write_register(address, values[0], device_id=unit)
            else:
                answer = self._client.write_registers(address, values, device_id=unit)
        except (ModbusException, OSError) as exc:
            self._client.close()
            raise SinkUnavailableError(
                f"the PLC at {self.settings.modbus_host}:{self.settings.modbus_port} did not take the write "
                f"to register {address}: {exc}"
            ) from None
        if answer.isError():
            raise SinkUnavailableError(
                f"the PLC at {self.settings.modbus_host}:{self.settings.modbus_port} refused the write to "
                f"register {address} (unit {unit}): {answer}"
            )

    def close(self) -> None:
        self._client.close()
