"""The global scheduler's state as plain values: instance rows and the dashboard snapshot."""

from __future__ import annotations

import dataclasses
from typing import Any

from llumnix_dask.policy.load import freeness, virtual_usage

# ``gs`` below is a GlobalScheduler (scheduler/core.py), which delegates to these functions; they read its
# registry, logs and counters and never change them.


def instance_rows(gs: Any) -> list[dict]:
    """One row per instance: ids, address, running/waiting counts, blocks, kv_usage, virtual_usage, freeness,
    terminating, migrating, dispatched, last report, and the backend / model / device it runs."""
    rows = []
    for rec in gs.instances.values():
        load = rec.load
        rows.append(
            {
                "instance_id": rec.instance_id,
                "address": rec.address,
                "name": rec.name,
                "num_running": load.num_running,
                "num_waiting": load.num_waiting,
                "used_blocks": load.used_blocks,
                "total_blocks": load.total_blocks,
                "kv_usage": load.used_blocks / load.total_blocks if load.total_blocks else 0.0,
                "virtual_usage": virtual_usage(load, gs.policy),
                "freeness": freeness(load, gs.policy),
                "num_high_priority": load.num_high_priority,
                "num_preemptions": load.num_preemptions,
                "terminating": rec.terminating,
                "migrating": rec.migrating or load.migrating,
                "dispatched": rec.dispatched,
                "last_report": rec.last_report,
                **{k: v for k, v in rec.info.items() if k in ("backend", "model", "device", "max_model_len")},
            }
        )
    return rows

def snapshot(gs: Any, n_migrations: int = 50, n_decisions: int = 20) -> dict:
    """Everything a dashboard needs, as a plain dict of plain values.

    Keys: ``time``; ``policy`` (the PolicyConfig as a dict); ``instances`` (list of rows, see
    :func:`instance_rows`: ids, address, running/waiting counts, blocks, kv_usage, virtual_usage,
    freeness, terminating, migrating, dispatched); ``migrations`` (the last ``n_migrations`` entries of the
    migration log: time, request_id, src, dst, ok, reason, plus protocol details such as downtime_s);
    ``latency`` (rolling TTFT/TPOT/E2E count/mean/p50/p99 seconds over the last 2,000 finished
    requests, and SLO attainment against each request's ``slo`` or the policy's ``ttft_slo_s`` /
    ``ttft_slo_high_s``, per priority "normal", "high" and "all"); ``instance_count`` (list of (time, count) on every change);
    ``counters`` (dispatched, migrations, migrations_failed, finished); ``target_instances``;
    ``decisions`` (the last ``n_decisions`` explain entries).
    """
    return {
        "time": gs.clock(),
        "policy": dataclasses.asdict(gs.policy),
        "instances": instance_rows(gs),
        "migrations": list(gs.migration_log)[-n_migrations:],
        "latency": gs.latency.summary(
            {0: getattr(gs.policy, "ttft_slo_s", None), 1: getattr(gs.policy, "ttft_slo_high_s", None)}
        ),
        "instance_count": gs.instance_history.as_list(),
        "counters": {
            "dispatched": gs.num_dispatched,
            "migrations": gs.num_migrations,
            "migrations_failed": gs.num_migrations_failed,
            "migrations_by_transport": dict(gs.migrations_by_transport),
            "finished": gs.latency.total,
        },
        "target_instances": gs.target_instances,
        "decisions": gs.explain(n_decisions),
    }
