"""Prometheus metrics, in a registry per app (tests create many apps; a global registry would clash).

Label sets are bounded: routes are templates (``/v1/inspections/{inspection_id}``), not paths; rejection
reasons are error codes; line and camera ids come from configured equipment.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series double the output and nobody graphs them
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "andon_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "andon_http_request_seconds", "HTTP request latency by route", ["route"], buckets=_STAGE_BUCKETS, registry=r
        )
        self.rejections = Counter("andon_rejections", "Requests refused, by error code", ["reason"], registry=r)
        self.decisions = Counter(
            "andon_decisions", "Frame decisions by line and camera", ["line_id", "camera_id", "decision"], registry=r
        )
        self.stage_seconds = Histogram(
            "andon_stage_seconds",
            "Time per frame in each stage (queue, decode, preprocess, infer, storage)",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("andon_queue_depth", "Frames admitted and waiting for or in inference", registry=r)
        self.queue_capacity = Gauge("andon_queue_capacity", "Frames admitted at most before 503", registry=r)
        self.active_model = Gauge(
            "andon_active_model_info", "1 for the model version now active", ["version", "hash"], registry=r
        )
        self.shadow = Counter(
            "andon_shadow_comparisons",
            "Shadow model verdicts compared with the active model",
            ["shadow_version", "outcome"],
            registry=r,
        )
        self.model_swaps = Counter("andon_model_swaps", "Active model changes", registry=r)

    def set_active_model(self, version: str | None, digest: str | None) -> None:
        self.active_model.clear()
        if version is not None:
            self.active_model.labels(version=version, hash=(digest or "")[:12]).set(1)

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        for stage in ("queue", "decode", "preprocess", "infer", "storage"):
            if stage in timings_ms:
                self.stage_seconds.labels(stage=stage).observe(timings_ms[stage] / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
