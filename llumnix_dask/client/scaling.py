"""The cluster-manager side of scaling to a size: start workers, and retire drained ones.

The global scheduler decides which instance to drain and drains it by live migration; the process that owns
the Dask cluster manager (the :class:`~llumnix_dask.Cluster`) starts and stops the worker processes. These
coroutines run on the Cluster's event loop. (Auto-scaling goes through Dask's adaptive deployment:
:mod:`llumnix_dask.client.adaptive`.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from llumnix_dask.wire import call
from llumnix_dask.wire import scheduler_api as api

logger = logging.getLogger(__name__)

POLL_S = 0.05


async def _rows(cluster: Any) -> list[api.InstanceRow]:
    return await call(cluster.client.scheduler, api.GetInstances(), list[api.InstanceRow])


async def _plan(sched: Any) -> api.ScalingPlan:
    return await call(sched, api.GetScalingPlan(), api.ScalingPlan)


async def _wait(cluster: Any, ready: Any, timeout: float, what: str) -> list[api.InstanceRow]:
    deadline = time.monotonic() + timeout
    while True:
        rows = await _rows(cluster)
        if ready(rows):
            return rows
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not done after {timeout:.0f} s")
        await asyncio.sleep(POLL_S)


def _start_workers(cluster: Any, count: int) -> None:
    local = cluster._local
    if local is None:
        raise RuntimeError(
            "this Cluster is attached to an external Dask scheduler and cannot start workers; "
            "add workers with your Dask cluster manager (dask worker --preload llumnix_dask.preload.worker ...)"
        )
    local.scale(len(local.worker_spec) + count)


async def retire(cluster: Any, entries: list[api.Retiree], timeout: float) -> None:
    """Stop the workers of drained instances and wait until the scheduler has forgotten them."""
    if not entries:
        return
    local = cluster._local
    if local is not None:
        await local.scale_down([e.name for e in entries])
    else:
        await cluster.client.scheduler.retire_workers(workers=[e.address for e in entries], close_workers=True)
    gone = {e.instance_id for e in entries}
    await _wait(cluster, lambda rows: not gone & {r.instance_id for r in rows}, timeout, "retiring instances")


async def scale_to(cluster: Any, n: int) -> None:
    """Run ``n`` active instances: start workers, or drain (by migration) and retire the extra ones."""
    if n < 1:
        raise ValueError(f"scale: n must be >= 1, got {n}")
    sched = cluster.client.scheduler
    await call(sched, api.SetTarget(n=n))
    rows = await _rows(cluster)
    active = [r for r in rows if not r.terminating]
    timeout = cluster.timeout
    if n > len(active):
        _start_workers(cluster, n - len(active))
        await _wait(
            cluster, lambda rs: sum(not r.terminating for r in rs) >= n, timeout, f"scaling up to {n} instances"
        )
    elif n < len(active):
        reply = await call(sched, api.Drain(count=len(active) - n), api.Drained)
        if reply.status != "OK":
            raise ValueError(reply.error)
        ids = set(reply.instance_ids)
        deadline = time.monotonic() + timeout
        while ids:
            plan = await _plan(sched)
            ready = [e for e in plan.retire if e.instance_id in ids]
            if ready:
                await retire(cluster, ready, timeout)
                ids -= {e.instance_id for e in ready}
            elif time.monotonic() > deadline:
                raise TimeoutError(f"draining {sorted(ids)} did not finish in {timeout:.0f} s")
            else:
                await asyncio.sleep(POLL_S)


async def keep_instances(cluster: Any, poll_s: float = 1.0) -> None:
    """Keep the embedded cluster at its target size until cancelled: a worker that died is restarted by its
    Nanny; one whose Nanny went too (or that closed itself) is replaced here."""
    from distributed.core import Status

    sched = cluster.client.scheduler
    while True:
        await asyncio.sleep(poll_s)
        if cluster._adaptive is not None and cluster._adaptive.state == "running":
            continue  # Cluster.adapt's adaptive deployment owns the size
        try:
            plan = await _plan(sched)
            local = cluster._local
            target = plan.target or cluster.target_instances
            gone = [name for name, w in list(local.workers.items())
                    if getattr(w, "status", None) in (Status.closed, Status.failed, Status.closing_gracefully)]
            for name in gone:
                local.worker_spec.pop(name, None)
                local.workers.pop(name, None)
            if target and plan.active < target and len(local.worker_spec) <= plan.total:
                logger.warning("llumnix cluster has %d of %d instances; starting %d", plan.active, target,
                               target - plan.active)
                local.scale(len(local.worker_spec) + target - plan.active)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("llumnix instance keeper step failed")
