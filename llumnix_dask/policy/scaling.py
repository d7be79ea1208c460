"""Auto-scaling: keep the cluster's average freeness inside the band [x, y] (Llumnix paper, 4.4).

Pure code. The caller keeps a :class:`ScalingState` and calls :func:`scaling_decision` every scaling
tick::

    >>> from llumnix_dask.config import PolicyConfig
    >>> cfg = PolicyConfig(scaling_enabled=True, scaling_patience_s=0)
    >>> full = [InstanceLoad("a", 100, 100, num_running=10, running_blocks=100)]
    >>> scaling_decision(full, cfg, now=0.0, state=ScalingState()).action
    'up'

The cluster's average freeness is the *request-weighted* mean of the instances' freeness, i.e. the
cluster's free (virtual) blocks per request: sum(M - sum V) / sum(B) over the non-terminating instances,
with B at least 1 per instance as in :func:`~llumnix_dask.policy.load.freeness` (so an idle cluster has
the freeness of an idle instance, M) (:func:`cluster_freeness`). Freeness is a per-request quantity,
so this is its natural average; the plain mean of per-instance ratios is not usable here because an
empty instance (B clamped to 1) counts with freeness M: one starting or idle instance of 960 blocks
lifts the mean of nine instances by ~100 blocks, which pushed a cluster drowning in queued requests above
y and drained an instance right after every scale-up (up/down oscillation under bursts).

* average freeness (over non-terminating instances) below ``scale_up_freeness`` (x) for at least
  ``scaling_patience_s``, and fewer than ``max_instances`` -> ``"up"`` by ``count`` instances: as many
  empty instances as it takes to lift the average back to x (at least one, up to ``max_instances``), so
  a surge is met in one step instead of one instance per tick;
* the cluster *without* the instance it would drain still above ``scale_down_freeness`` (y) for that long
  (its capacity gone, its requests and their blocks still counted: they move to the others), more than
  ``min_instances`` and no drain already under way -> ``"down"`` with the instance to drain: the one
  holding the fewest requests (least to migrate away), ties broken by the highest freeness. Judging the
  cluster as it will be after the drain, not as it is, keeps a drain from pushing the cluster below x and
  buying the instance back at the next tick (up/down churn: every start and drain costs instance time);
* otherwise ``"none"``.

Instances that are starting up should be passed in as empty loads: they count towards the average
(what the cluster will look like once they serve), which keeps one burst from triggering several
scale-ups in a row. After an action the patience clock restarts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from llumnix_dask.config import PolicyConfig
from llumnix_dask.policy.load import InstanceLoad, freeness, virtual_usage


@dataclass(frozen=True)
class ScalingDecision:
    """``action`` is ``"none"``, ``"up"`` or ``"down"``; ``instance_id`` is the instance to drain on down."""

    action: str
    instance_id: str | None
    reason: dict
    count: int = 0  # instances to add on "up"


@dataclass
class ScalingState:
    """Since when (``since``) the average freeness has been outside the band, and on which side."""

    direction: str | None = None  # "up" (below x) or "down" (above y)
    since: float | None = None


def _free_and_requests(active: Sequence[InstanceLoad], config: PolicyConfig) -> tuple[float, int]:
    """Free virtual blocks and requests (at least one per instance) over ``active``."""
    free = sum(x.total_blocks - virtual_usage(x, config) for x in active)
    return free, sum(max(1, x.num_requests) for x in active)


def cluster_freeness(loads: Sequence[InstanceLoad], config: PolicyConfig) -> float:
    """Free virtual blocks per request over the non-terminating instances, each counting at least one request
    (``inf`` when none is left)."""
    active = [x for x in loads if not x.terminating]
    if not active:
        return math.inf
    free, requests = _free_and_requests(active, config)
    return free / requests


def instances_to_add(loads: Sequence[InstanceLoad], config: PolicyConfig) -> int:
    """How many empty instances lift the cluster's freeness to ``scale_up_freeness`` (at least 1), within
    ``max_instances``. New instances are the size of the largest one serving."""
    active = [x for x in loads if not x.terminating]
    room = config.max_instances - len(active)
    if room <= 0:
        return 0
    if not active:
        return 1
    size = max(x.total_blocks for x in active)
    free, requests = _free_and_requests(active, config)
    x = config.scale_up_freeness
    if size <= x:
        return room
    # (free + n * size) / (requests + n) >= x  <=>  n >= (x * requests - free) / (size - x)
    return max(1, min(room, math.ceil((x * requests - free) / (size - x))))


def freeness_without(loads: Sequence[InstanceLoad], victim: InstanceLoad, config: PolicyConfig) -> float:
    """The cluster's freeness once ``victim`` is drained: its capacity gone, its requests on the others."""
    others = [x for x in loads if not x.terminating and x is not victim]
    free, requests = _free_and_requests(others, config)
    return (free - virtual_usage(victim, config)) / max(1, requests + victim.num_requests)


def scaling_decision(
    loads: Sequence[InstanceLoad], config: PolicyConfig, now: float, state: ScalingState, starting: int = 0
) -> ScalingDecision:
    """Decide whether to add instances, drain one, or do nothing. ``starting``: instances asked for that do
    not serve yet; they count as empty ones of the largest size, and nothing is drained while they start."""
    size = max((x.total_blocks for x in loads), default=0)
    loads = [*loads, *(InstanceLoad(f"starting-{i}", size, 0) for i in range(starting if size else 0))]
    active = [x for x in loads if not x.terminating]
    draining = len(loads) - len(active)
    avg = cluster_freeness(active, config)
    reason = {
        "average_freeness": avg,
        "band": [config.scale_up_freeness, config.scale_down_freeness],
        "instances": len(active),
        "draining": draining,
        "starting": starting,
    }
    if not config.scaling_enabled:
        state.direction, state.since = None, None
        return ScalingDecision("none", None, {**reason, "why": "scaling disabled"})

    serving = active[: len(active) - starting] if starting else active
    victim = (min(serving, key=lambda x: (x.num_requests, -freeness(x, config)))
              if len(active) > 1 and not starting else None)
    after = freeness_without(active, victim, config) if victim is not None else -math.inf
    reason["freeness_after_drain"] = after
    if avg < config.scale_up_freeness and len(active) < config.max_instances:
        direction = "up"
    elif after > config.scale_down_freeness and len(active) > config.min_instances and draining == 0:
        direction = "down"
    else:
        state.direction, state.since = None, None
        return ScalingDecision("none", None, {**reason, "why": "inside band or at a limit"})

    if state.direction != direction:
        state.direction, state.since = direction, now
    waited = now - (state.since if state.since is not None else now)
    reason["outside_band_s"] = waited
    if waited < config.scaling_patience_s:
        return ScalingDecision("none", None, {**reason, "why": f"waiting to scale {direction}"})
    state.direction, state.since = None, None  # restart the patience clock after acting
    if direction == "up":
        count = instances_to_add(active, config)
        return ScalingDecision("up", None, {**reason, "add": count, "why": "average freeness below x"}, count)
    assert victim is not None
    reason["drain_requests"] = victim.num_requests
    return ScalingDecision("down", victim.instance_id,
                           {**reason, "why": "freeness above y even without the drained instance"})
