"""Auto-scaling through Dask's own adaptive deployment, driven by the global scheduler's scaling policy.

The scaling policy runs in the global scheduler (:mod:`llumnix_dask.policy.scaling`): it raises the target
count when average freeness falls below the band, and drains an instance by live migration when it rises
above it. :class:`LlumnixAdaptive` is a ``distributed.deploy.Adaptive`` whose target is that count; Dask's
adaptive machinery starts workers, and closes only the ones the scheduler plugin lets it close
(``valid_workers_downscaling``: drained instances). Any Dask cluster manager can use it::

    cluster.adapt(Adaptive=LlumnixAdaptive, minimum=1, maximum=8)   # a LocalCluster, KubeCluster, ...

(:meth:`llumnix_dask.Cluster.adapt` does this for its embedded cluster and sets the policy's band.)
"""

from __future__ import annotations

from typing import Any

from distributed.deploy.adaptive import Adaptive

from llumnix_dask.wire import call
from llumnix_dask.wire.scheduler_api import GetScalingPlan, ScalingPlan


class LlumnixAdaptive(Adaptive):
    """Adaptive deployment whose target is the global scheduler's instance count."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The policy already waited (scaling_patience_s) before it asked; a drained instance goes at once.
        kwargs.setdefault("wait_count", 1)
        super().__init__(*args, **kwargs)

    async def target(self) -> int:
        plan = await call(self.scheduler, GetScalingPlan(), ScalingPlan)
        return plan.target if plan.target is not None else plan.total
