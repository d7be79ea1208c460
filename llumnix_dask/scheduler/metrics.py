"""Prometheus metrics of the global scheduler: per-instance gauges (running, queued, KV usage, freeness), the
instance count and live migrations by outcome.

The scheduler plugin registers an :class:`InstanceCollector` with ``prometheus_client``'s default registry of
the scheduler process, so Dask's own ``/metrics`` route on the scheduler's dashboard serves them next to
Dask's metrics; the HTTP server (``llumnix_dask.serve``) adds the same collector to its ``/metrics``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

logger = logging.getLogger(__name__)


class InstanceCollector:
    """Per-instance gauges and the migration counter, from a scheduler snapshot taken at each scrape."""

    def __init__(self, snapshot: Callable[[], dict]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Any:
        try:
            snap = self._snapshot()
        except Exception:
            return
        gauges = {
            "num_running": GaugeMetricFamily("llumnix_instance_running", "Running requests", labels=["instance"]),
            "num_waiting": GaugeMetricFamily("llumnix_instance_queue", "Queued requests", labels=["instance"]),
            "kv_usage": GaugeMetricFamily("llumnix_instance_kv_usage", "Fraction of KV blocks used", labels=["instance"]),
            "freeness": GaugeMetricFamily("llumnix_instance_freeness", "Free blocks per request", labels=["instance"]),
        }
        for row in snap.get("instances", []):
            for key, family in gauges.items():
                value = row.get(key)
                if value is not None and abs(float(value)) != float("inf"):
                    family.add_metric([row["instance_id"]], float(value))
        yield from gauges.values()
        instances = GaugeMetricFamily("llumnix_instances", "Registered engine instances")
        instances.add_metric([], len(snap.get("instances", [])))
        yield instances
        counters = snap.get("counters", {})
        migrations = CounterMetricFamily("llumnix_migrations", "Live migrations", labels=["outcome"])
        migrations.add_metric(["committed"], counters.get("migrations", 0))
        migrations.add_metric(["failed"], counters.get("migrations_failed", 0))
        yield migrations
        paths = CounterMetricFamily("llumnix_migrations_by_transport", "Committed live migrations by the path "
                                    "their KV blocks took", labels=["transport"])
        for path, count in sorted((counters.get("migrations_by_transport") or {}).items()):
            paths.add_metric([path], count)
        yield paths

    def describe(self) -> list:
        return []  # families are known at scrape time only; nothing to reserve at registration


def register_with_dask(snapshot: Callable[[], dict]) -> InstanceCollector | None:
    """Add a collector over ``snapshot`` to this process's default registry (Dask's scheduler ``/metrics``)."""
    try:
        from prometheus_client import REGISTRY
    except ImportError:  # pragma: no cover - prometheus-client is a dependency
        return None
    collector = InstanceCollector(snapshot)
    REGISTRY.register(collector)
    return collector


def unregister_from_dask(collector: InstanceCollector | None) -> None:
    if collector is None:
        return
    from prometheus_client import REGISTRY

    try:
        REGISTRY.unregister(collector)
    except KeyError:
        logger.debug("llumnix metrics collector was not registered")
