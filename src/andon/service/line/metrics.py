"""Prometheus series of the line, in the app's registry (``/metrics``): one label, the sink."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 30.0, 300.0)


class LineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.delivered = Counter(
            "andon_line_delivered",
            "Verdicts delivered to a line sink; late: after line_deadline_ms, so delivered as reject; refused: "
            "a value the sink cannot take (closed unsent, logged)",
            ["sink", "timing"],
            registry=r,
        )
        self.latency = Histogram(
            "andon_line_delivery_seconds",
            "From frame receipt to the start of its delivery to the sink",
            ["sink"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.up = Gauge("andon_line_sink_up", "1 while the sink takes writes, 0 while it fails", ["sink"], registry=r)
        self.pending = Gauge(
            "andon_line_outbox_pending",
            "Verdicts in the outbox not yet delivered to the sink (as last counted; exact while it fails)",
            ["sink"],
            registry=r,
        )
        self.failures = Counter("andon_line_sink_failures", "Failed tries to write to the sink", ["sink"], registry=r)
        self.refusals = Counter(
            "andon_line_refusals",
            "Frames refused with 503 that named a part: queued as reject verdicts, dropped (the refusal queue was "
            "full) or failed (the database did not take them)",
            ["outcome"],
            registry=r,
        )
        self.acks = Counter(
            "andon_line_acks",
            "Verdicts the PLC acknowledged (acked) or did not within the sink's ack timeout (unacked)",
            ["sink", "outcome"],
            registry=r,
        )
        self.ack_latency = Histogram(
            "andon_line_ack_seconds",
            "From a verdict's write to the PLC's acknowledgement",
            ["sink"],
            buckets=_BUCKETS,
            registry=r,
        )
