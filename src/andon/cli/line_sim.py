"""``andon line-sim``: a simulated PLC beside ``andon camera-sim``, so that one box shows the whole loop.

It reads the line's wiring from the same settings as ``andon serve`` (``--config``, ANDON_* variables) and
plays the PLC's side of docs/line.md:

* **Modbus** (``modbus`` in ``line_sinks``): a pymodbus TCP **server** on ``modbus_host:modbus_port`` holding
  the registers andon's Modbus sink writes. When a block's sequence register changes it reads the block,
  judges it, and, where ``modbus_ack_registers`` names the block, writes the sequence into its ack register.
* **OPC UA** (``opcua`` in ``line_sinks``): an asyncua **client** of andon's server at ``opcua_endpoint``
  (with ``opcua_username`` / ``opcua_password``, or anonymously), subscribed to every Result's
  ResultReadyEventType event and to the heartbeat and system state; with ``opcua_ack_timeout_ms`` it writes each
  verdict's Sequence into the Result's Ack.

Per verdict it prints the part id, andon's decision, the latency andon reports (OPC UA) and the PLC's own
fail-safe outcome: **reject** on a heartbeat that stood still for ``--watchdog-periods`` periods (or a system
state other than Operational), on a gap in a block's sequence (a verdict missed), on an echo that does not
match (none, not echoed, not ``--part-prefix``-<n>, or the same part twice), and on andon's reject / late /
missing camera; **review** for review; **pass** only when all of that holds.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import typer

RESULTS = {1: "pass", 2: "review", 3: "reject"}


def register(app: typer.Typer) -> None:
    app.command("line-sim")(line_sim)


def line_sim(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="The service's config file (the wiring: line_sinks, modbus_*, opcua_*)."
    ),
    modbus: bool | None = typer.Option(
        None, "--modbus/--no-modbus", help="Be the Modbus PLC (default: when line_sinks names modbus)."
    ),
    opcua: bool | None = typer.Option(
        None, "--opcua/--no-opcua", help="Be an OPC UA client (default: when line_sinks names opcua)."
    ),
    seconds: float = typer.Option(0.0, "--seconds", min=0.0, help="Stop after this long (0: until Ctrl-C)."),
    watchdog_periods: float = typer.Option(
        3.0, "--watchdog-periods", min=1.0, max=100.0, help="Heartbeat periods without a change before rejecting."
    ),
    part_prefix: str | None = typer.Option(
        None, "--part-prefix", help="Part ids the line gives are PREFIX-<n> (as camera-sim --part-prefix)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="Only the summary, not one line per verdict."),
) -> None:
    """A simulated PLC: the Modbus registers andon writes and/or an OPC UA client of andon's server; per
    verdict the part id, andon's decision and latency, and the PLC's fail-safe outcome."""
    from andon.errors import ConfigError
    from andon.service.settings import Settings

    settings = Settings.load(config)
    use_modbus = "modbus" in settings.line_sinks if modbus is None else modbus
    use_opcua = "opcua" in settings.line_sinks if opcua is None else opcua
    if not use_modbus and not use_opcua:
        raise ConfigError(
            f"nothing to simulate: line_sinks is {settings.line_sinks or 'empty'}; name modbus and/or opcua there "
            "(or pass --modbus / --opcua)"
        )
    if use_modbus and not settings.modbus_blocks and not settings.modbus_part_blocks:
        raise ConfigError("--modbus needs modbus_blocks (or modbus_part_blocks) in the settings: the PLC's blocks")
    if part_prefix is not None and not re.fullmatch(r"[A-Za-z0-9._:-]{1,32}", part_prefix):
        raise ConfigError(f"--part-prefix {part_prefix!r}: letters, digits, . _ : - (at most 32)")
    sim = LineSim(settings, watchdog_periods, part_prefix, quiet)
    try:
        asyncio.run(sim.run(use_modbus, use_opcua, seconds))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise ConfigError(f"line-sim could not start: {exc}") from None
    typer.echo(sim.summary())


@dataclass
class Seen:
    source: str  # "modbus" / "opcua"
    block: tuple[str, str]  # ("frame", camera) / ("part", line)
    sequence: int
    result: int
    flags: int
    part_id: str
    latency_ms: float | None = None


class Judge:
    """The PLC program's fail-safe logic (docs/line.md, "PLC logic"), one state per block."""

    def __init__(self, part_prefix: str | None, wrap: int) -> None:
        self.pattern = re.compile(rf"{re.escape(part_prefix)}-\d+") if part_prefix else None
        self.wrap = wrap
        self.last_sequence: dict[tuple[str, str], int] = {}
        self.last_part: dict[tuple[str, str], str] = {}

    def judge(self, seen: Seen, alive: str | None) -> tuple[str, str] | None:
        """(outcome, why) for a new verdict; None for a sequence seen already (a repeat: nothing to do)."""
        last = self.last_sequence.get(seen.block)
        if last == seen.sequence:
            return None
        self.last_sequence[seen.block] = seen.sequence
        why = []
        if alive is not None:
            why.append(alive)
        if last is not None:
            expected = last % self.wrap + 1
            if seen.sequence != expected:
                missed = (seen.sequence - expected) % self.wrap
                why.append(f"sequence gap: {missed} missed")
        previous = self.last_part.get(seen.block)
        self.last_part[seen.block] = seen.part_id
        if not seen.part_id or seen.flags & 2:
            why.append("no part id echo")
        elif self.pattern is not None and not self.pattern.fullmatch(seen.part_id):
            why.append("echo mismatch")
        elif previous == seen.part_id:
            why.append("same part id twice")
        if seen.flags & 1:
            why.append("late")
        if seen.flags & 4:
            why.append("camera missing")
        decision = RESULTS.get(seen.result)
        if decision is None:
            why.append(f"unknown result code {seen.result}")
        if why or decision == "reject":
            return "reject", ", ".join(why) or "andon rejected"
        return decision, ""


class Watchdog:
    """The heartbeat a PLC watches: alive while it changes at least every ``limit_s``."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.value: int | None = None
        self.changed = time.monotonic()
        self.state = "Operational"  # OPC UA's SystemState (Modbus: always)
        self.trips = 0
        self.tripped = False

    def beat(self, value: int) -> None:
        if value != self.value:
            self.value, self.changed = value, time.monotonic()

    def problem(self) -> str | None:
        if self.value is None or time.monotonic() - self.changed > self.limit_s:
            return "watchdog: heartbeat stopped"
        if self.state != "Operational":
            return f"system state {self.state}"
        return None


class LineSim:
    def __init__(self, settings, watchdog_periods: float, part_prefix: str | None, quiet: bool) -> None:
        self.settings = settings
        self.part_prefix = part_prefix
        self.quiet = quiet
        self.limit_s = watchdog_periods * settings.line_heartbeat_s
        self.outcomes: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.acks = 0
        self.lock = threading.Lock()
        self.stopping = asyncio.Event()

    # ---- shared ----------------------------------------------------------------------------------------
    def report(self, seen: Seen, judge: Judge, dog: Watchdog) -> str | None:
        with self.lock:
            verdict = judge.judge(seen, dog.problem())
            if verdict is None:
                return None
            outcome, why = verdict
            self.outcomes[outcome] += 1
            for reason in filter(None, why.split(", ")):
                self.reasons[re.sub(r"\d+ missed", "n missed", reason)] += 1
        if not self.quiet:
            kind, name = seen.block
            where = f"{'line' if kind == 'part' else 'camera'} {name}"
            latency = "     -  " if seen.latency_ms is None else f"{seen.latency_ms:6.1f} ms"
            andon = RESULTS.get(seen.result, f"code {seen.result}")
            plc = outcome.upper() if outcome == "reject" else outcome
            typer.echo(
                f"[{seen.source}] {where:<16} #{seen.sequence:<6} part {seen.part_id or '-':<16} "
                f"andon {andon:<6} {latency}  PLC: {plc}{f' ({why})' if why else ''}"
            )
        return outcome

    def watch(self, source: str, dog: Watchdog) -> None:
        problem = dog.problem()
        if problem and not dog.tripped:
            dog.tripped = True
            dog.trips += 1
            typer.echo(f"[{source}] {problem}: every part at the gate is rejected until it moves again")
        elif not problem and dog.tripped:
            dog.tripped = False
            typer.echo(f"[{source}] heartbeat back: verdicts decide again")

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())) or "none"
        why = ", ".join(f"{k} {v}" for k, v in self.reasons.most_common()) or "none"
        return f"line-sim: {sum(self.outcomes.values())} verdicts: {parts}; reject reasons: {why}; acks {self.acks}"

    async def run(self, use_modbus: bool, use_opcua: bool, seconds: float) -> None:
        tasks = []
        if use_modbus:
            tasks.append(asyncio.create_task(self.modbus()))
        if use_opcua:
            tasks.append(asyncio.create_task(self.opcua()))
        try:
            if seconds:
                done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
            else:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a task that failed (a port taken): its error
        finally:
            self.stopping.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- Modbus: the PLC's registers -------------------------------------------------------------------
    async def modbus(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        s = self.settings
        judge, dog = Judge(self.part_prefix, 0xFFFF), Watchdog(self.limit_s)
        blocks = {start: ("frame", cam) for cam, start in s.modbus_blocks.items()}
        blocks.update({start: ("part", line) for line, start in s.modbus_part_blocks.items()})
        acks = dict(s.modbus_ack_registers)
        n = s.modbus_part_id_registers

        async def action(function_code, start_address, address, count, current, set_values):
            if set_values is None:
                return None
            if address == s.modbus_heartbeat_register and len(set_values) == 1:
                dog.beat(int(set_values[0]))
            block = blocks.get(address)
            if block is not None and len(set_values) == 1:  # the sequence: the block is complete
                at = address - start_address
                body = current[at + 1 : at + 4 + n]
                length = body[2]
                raw = b"".join(int(v).to_bytes(2, "big") for v in body[3:])
                part_id = raw[:length].decode("ascii", "replace") if length else ""
                seen = Seen("modbus", block, int(set_values[0]), body[0], body[1], part_id)
                self.report(seen, judge, dog)
                ack = acks.get(block[1])
                if ack is not None:
                    current[ack - start_address] = int(set_values[0])
                    self.acks += 1
            return None

        device = SimDevice(id=0, simdata=[SimData(0, values=[0] * 65536, datatype=DataType.REGISTERS)], action=action)
        server = ModbusTcpServer(device, address=(s.modbus_host, s.modbus_port))
        serving = asyncio.create_task(server.serve_forever())
        typer.echo(
            f"[modbus] PLC listening on {s.modbus_host}:{s.modbus_port}: blocks {dict(s.modbus_blocks)}"
            f"{f', part blocks {dict(s.modbus_part_blocks)}' if s.modbus_part_blocks else ''}"
            f"{f', ack registers {acks}' if acks else ''}, heartbeat register {s.modbus_heartbeat_register}"
        )
        try:
            while not self.stopping.is_set():
                if serving.done():
                    failed = serving.exception()
                    if failed is not None:  # the port is taken, the address is not this host's
                        raise OSError(f"the Modbus server at {s.modbus_host}:{s.modbus_port}: {failed}")
                    return
                self.watch("modbus", dog)
                await asyncio.sleep(min(0.05, self.limit_s / 4))
        finally:
            await server.shutdown()

    # ---- OPC UA: a client of andon's server --------------------------------------------------------------
    async def opcua(self) -> None:
        from urllib.parse import urlsplit, urlunsplit

        from asyncua import Client, ua

        s = self.settings
        url = urlsplit(s.opcua_endpoint)
        host = "127.0.0.1" if url.hostname in ("0.0.0.0", "::") else url.hostname
        endpoint = urlunsplit(url._replace(netloc=f"{host}:{url.port}"))
        judge, dog = Judge(self.part_prefix, 0xFFFFFFFF), Watchdog(self.limit_s)
        cameras = sorted(set(s.opcua_cameras) | {c for cs in s.line_cameras.values() for c in cs})
        bases = {("frame", c): f"andon/cameras/{_seg(c)}/Result" for c in cameras}
        bases.update({("part", line): f"andon/lines/{_seg(line)}/Result" for line in s.line_cameras})
        sim = self

        class Handler:
            def __init__(self, client, ns):
                self.client, self.ns = client, ns

            def datachange_notification(self, node, value, data):
                name = node.nodeid.Identifier
                if name == "andon/Heartbeat":
                    dog.beat(int(value))
                elif name == "andon/SystemState":
                    dog.state = str(value)

            async def event_notification(self, event):
                block = ("part", event.LineId) if event.LineId else ("frame", event.CameraId)
                seen = Seen(
                    "opcua", block, int(event.Sequence), int(event.ResultCode), int(event.Flags),
                    str(event.PartId or ""), float(event.LatencyMs),
                )  # fmt: skip
                sim.report(seen, judge, dog)
                if s.opcua_ack_timeout_ms and block in bases:
                    node = self.client.get_node(ua.NodeId(f"{bases[block]}/Ack", self.ns))
                    await node.write_value(ua.Variant(seen.sequence, ua.VariantType.UInt32))
                    sim.acks += 1

        said = False
        while not self.stopping.is_set():
            client = Client(endpoint, timeout=5)
            if s.opcua_username:
                client.set_user(s.opcua_username)
                client.set_password(s.opcua_password.get_secret_value())
            try:
                async with client:
                    ns = await client.get_namespace_index(s.opcua_namespace)
                    handler = Handler(client, ns)
                    sub = await client.create_subscription(20, handler)
                    etype = client.get_node(ua.NodeId("andon/ResultReadyEventType", ns))
                    for base in bases.values():
                        await sub.subscribe_events(client.get_node(ua.NodeId(base, ns)), etype)
                    await sub.subscribe_data_change(
                        [client.get_node(ua.NodeId(n, ns)) for n in ("andon/Heartbeat", "andon/SystemState")]
                    )
                    typer.echo(f"[opcua] subscribed to {endpoint}: {len(bases)} Results (namespace {ns})")
                    said = False
                    while not self.stopping.is_set():
                        self.watch("opcua", dog)
                        await client.check_connection()
                        await asyncio.sleep(min(0.05, self.limit_s / 4))
            except (OSError, asyncio.TimeoutError, ua.UaError, ConnectionError) as exc:
                if not said:
                    typer.echo(f"[opcua] andon's server at {endpoint} is not reachable ({exc!r}); trying again")
                    said = True
                dog.value = None  # no connection: no heartbeat
                self.watch("opcua", dog)
                await asyncio.sleep(0.5)


def _seg(value: str) -> str:
    return value.replace("%", "%25").replace("/", "%2F")
