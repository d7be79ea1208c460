"""The scheduler's Prometheus collector: per-instance gauges and migrations by outcome and by transport."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from llumnix_dask.config import PolicyConfig
from llumnix_dask.policy.load import InstanceLoad
from llumnix_dask.scheduler.core import GlobalScheduler
from llumnix_dask.scheduler.metrics import InstanceCollector


def test_collector_exposes_instances_and_migrations_by_path():
    gs = GlobalScheduler(PolicyConfig(), clock=lambda: 0.0)
    gs.register("a", "tcp://a:1", InstanceLoad("a", total_blocks=100, used_blocks=25, num_running=2, running_blocks=25))
    gs.register("b", "tcp://b:1", InstanceLoad("b", total_blocks=100, used_blocks=0))
    gs.migration_finished("a", "b", "r1", True, "load", {"transport": "dask", "blocks": 3})
    gs.migration_finished("a", "b", "r2", True, "load", {"transport": "dask"})
    gs.migration_finished("a", "b", "r3", False, "refused", {})
    registry = CollectorRegistry()
    registry.register(InstanceCollector(lambda: gs.snapshot(0, 0)))
    text = generate_latest(registry).decode()
    assert 'llumnix_instance_kv_usage{instance="a"} 0.25' in text and "llumnix_instances 2.0" in text
    assert 'llumnix_migrations_total{outcome="committed"} 2.0' in text
    assert 'llumnix_migrations_total{outcome="failed"} 1.0' in text
    assert 'llumnix_migrations_by_transport_total{transport="dask"} 2.0' in text
