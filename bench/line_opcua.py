"""The OPC UA server: frame posted -> ResultReady event at a subscribed client, and the PLC's acknowledgement.

    python -m bench.line_opcua [--frames 200] [--fps 15] [--ack-timeout-ms 500]

The service in this process (FastAPI's test client: no HTTP socket; SQLite, local disk, 2 inference threads)
with the tests' tiny model (tests/tiny_onnx.py) and the opcua sink; an asyncua client (another thread) that
subscribes to camera top's Result event and writes each verdict's Sequence into its Ack from a second
thread, as a PLC program would. One camera posts ``--frames`` 640x480 JPEGs, each with its own part id, at
``--fps``. Reported: the service's start-up (with the OPC UA server's), frame posted -> event received
(p50 / p99 / max), andon's own LatencyMs (frame receipt -> delivery start), and the acknowledgements andon
recorded (write -> ack p50 / p99, how many were not acknowledged within the timeout).
"""

from __future__ import annotations

import argparse
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def _pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--ack-timeout-ms", type=float, default=500.0)
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from asyncua import ua
    from asyncua.sync import Client

    from andon.service.line.tables import LineOutbox
    from line_support import free_port, wait_for
    from service_support import PASS, REJECT, client_for, jpeg, post_frame, settings_for
    from tiny_onnx import write_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="andon-bench-opcua-"))
    port = free_port()
    settings = settings_for(
        tmp,
        write_tiny_model(tmp / "tiny.onnx"),
        line_sinks=["opcua"],
        opcua_endpoint=f"opc.tcp://127.0.0.1:{port}/andon",
        opcua_cameras=["top"],
        opcua_anonymous=True,
        opcua_ack_timeout_ms=a.ack_timeout_ms,
    )
    got: dict[str, tuple[float, float]] = {}
    acks: queue.Queue = queue.Queue()

    class Handler:
        def event_notification(self, event) -> None:
            got[event.PartId] = (time.perf_counter(), event.LatencyMs)
            acks.put(event.Sequence)  # written from another thread: the handler runs in the client's loop

        def status_change_notification(self, status) -> None:
            pass

    t0 = time.perf_counter()
    with client_for(settings) as client:
        worker = client.app.state.ctx.pipeline.line.workers[0]
        wait_for(lambda: worker.beats >= 1, 60, "the OPC UA server")
        startup = time.perf_counter() - t0
        plc = Client(f"opc.tcp://127.0.0.1:{port}/andon")
        plc.connect()
        ns = plc.get_namespace_index("urn:andon:line")
        ack = plc.get_node(f"ns={ns};s=andon/cameras/top/Result/Ack")
        sub = plc.create_subscription(10, Handler())
        sub.subscribe_events(
            plc.get_node(f"ns={ns};s=andon/cameras/top/Result"), plc.get_node(f"ns={ns};s=andon/ResultReadyEventType")
        )

        def acker() -> None:
            while (seq := acks.get()) is not None:
                ack.write_value(ua.Variant(seq, ua.VariantType.UInt32))

        threading.Thread(target=acker, daemon=True).start()
        sent: dict[str, float] = {}
        frames = [jpeg(PASS if i % 5 else REJECT, size=(480, 640), noise=i) for i in range(a.frames)]
        start = time.perf_counter()
        for i, body in enumerate(frames):
            due = start + i / a.fps
            time.sleep(max(0.0, due - time.perf_counter()))
            sent[f"B-{i}"] = time.perf_counter()
            assert post_frame(client, body, camera="top", part=f"B-{i}").status_code == 201
        wait_for(lambda: len(got) == a.frames, 60, "every event")
        time.sleep(2 * a.ack_timeout_ms / 1000.0 + 0.5)  # the last outcomes recorded
        with client.app.state.ctx.sessions() as session:
            outcomes = [(r.detail or {}).get("ack") for r in session.query(LineOutbox)]
        acks.put(None)
        plc.disconnect()
    waits = [o["waited_ms"] for o in outcomes if o and o["acked"]]
    unacked = sum(1 for o in outcomes if o and not o["acked"])
    latency = [(got[k][0] - sent[k]) * 1000.0 for k in sent]
    andon = [got[k][1] for k in sent]
    print(f"{cpu_model()}; {a.frames} frames at {a.fps:g} fps; service + OPC UA server up in {startup:.1f} s")
    print(
        f"posted -> event at the client: p50 {_pct(latency, 50):.1f} ms, p99 {_pct(latency, 99):.1f} ms, "
        f"max {max(latency):.1f} ms; andon's LatencyMs p50 {_pct(andon, 50):.1f} ms, p99 {_pct(andon, 99):.1f} ms"
    )
    print(
        f"acks: {len(waits)} acknowledged, {unacked} not within {a.ack_timeout_ms:g} ms; write -> ack "
        f"p50 {_pct(waits, 50):.1f} ms, p99 {_pct(waits, 99):.1f} ms"
    )


if __name__ == "__main__":
    main()
