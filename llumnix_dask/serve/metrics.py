"""Prometheus metrics of the HTTP server: request latencies observed here, instance state from the scheduler.

Latency histograms are filled as requests finish (``observe``); per-instance gauges (queue, KV usage,
freeness) and the migration counter are the global scheduler's (:mod:`llumnix_dask.scheduler.metrics`, also
served at the Dask scheduler's own ``/metrics``), read from its snapshot at scrape time.
"""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from llumnix_dask.scheduler.metrics import InstanceCollector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DISPATCH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class ServerMetrics:
    """The metrics of one server (its own registry, so several servers can live in one process)."""

    def __init__(self, snapshot: Callable[[], dict] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.ttft = Histogram("llumnix_ttft_seconds", "Time to first token", ["priority"],
                              buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tpot = Histogram("llumnix_tpot_seconds", "Time per output token after the first", ["priority"],
                              buckets=LATENCY_BUCKETS, registry=self.registry)
        self.e2e = Histogram("llumnix_e2e_seconds", "Request latency", ["priority"],
                             buckets=LATENCY_BUCKETS, registry=self.registry)
        self.dispatch = Histogram("llumnix_dispatch_latency_seconds", "Global scheduler dispatch round trip",
                                  buckets=DISPATCH_BUCKETS, registry=self.registry)
        self.requests = Counter("llumnix_requests", "Requests by outcome", ["outcome"], registry=self.registry)
        if snapshot is not None:
            self.registry.register(InstanceCollector(snapshot))

    def observe(self, completion: Any) -> None:
        """Record a finished request (a :class:`~llumnix_dask.client.records.Completion`)."""
        prio = "high" if completion.priority else "normal"
        if completion.ttft is not None:
            self.ttft.labels(prio).observe(completion.ttft)
        if completion.tpot is not None:
            self.tpot.labels(prio).observe(completion.tpot)
        if completion.e2e is not None:
            self.e2e.labels(prio).observe(completion.e2e)
        self.dispatch.observe(completion.dispatch_s)
        self.requests.labels(completion.finish_reason or "unknown").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
