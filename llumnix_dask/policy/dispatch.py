"""Dispatch: which instance a new request goes to (Llumnix paper, section 4.4).

Pure code over :class:`InstanceLoad` snapshots. The caller keeps a :class:`DispatchState` and calls
:meth:`DispatchState.record` once it has actually placed the request (``dispatch`` never mutates it)::

    >>> from llumnix_dask.config import PolicyConfig
    >>> loads = [InstanceLoad("a", 100, 80, num_running=2, running_blocks=80),
    ...          InstanceLoad("b", 100, 20, num_running=2, running_blocks=20)]
    >>> state = DispatchState()
    >>> d = choose_instance(loads, RequestLoad("r", 4), PolicyConfig(), state)
    >>> d.instance_id, d.reason["freeness"]
    ('b', 40.0)
    >>> state.record(d.instance_id)

Policies (``PolicyConfig.dispatch``):

* ``llumnix`` and ``infaas``: the freest instance (highest freeness). Instances whose freeness is below
  ``busy_freeness`` are skipped while a non-busy one exists (busy filter). The two differ only in that
  infaas never migrates (see :mod:`llumnix_dask.policy.migration`).
* ``round_robin``: the instance that has received the fewest requests so far.
* ``random``: uniformly at random (seeded by ``DispatchState.seed``).

Priorities (``priorities_enabled``) act through freeness, as in the paper (section 4.4.2): every
high-priority request adds ``priority_headroom_blocks`` of virtual usage to its instance, so that instance
looks loaded, new normal requests go elsewhere and migration moves normal requests away - its batch stays
small and its decode fast. The headroom is there to repel the *other* requests, so a high-priority request
itself is dispatched by the freeness of the real load (headroom left out): it goes to the instance whose
batch is lightest, which is typically one already kept light for high-priority requests. Two earlier
designs were weaker: sending it to the instance with the fewest high-priority requests spread them one per
instance, so at the paper's load every instance carried the same headroom and it told them apart no more;
dispatching it by the freeness *with* headroom does the same (the headroom of the high-priority requests
already there pushes the new one to an instance full of normal requests). The engine side (high-priority
requests ahead in the local queue, preempted last) is in :mod:`llumnix_dask.engine.sim`.

A terminating instance never receives a request (its freeness is ``-inf``; it is also filtered out
explicitly, so it is never chosen even when it is the only instance left).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Sequence

from llumnix_dask.config import PolicyConfig
from llumnix_dask.policy.load import InstanceLoad, RequestLoad, freeness
from llumnix_dask.request import Priority


class NoInstanceAvailable(RuntimeError):
    """No instance can take a request (none registered, or every one is terminating)."""


@dataclass(frozen=True)
class DispatchDecision:
    """The chosen instance and the numbers that decided it (for the dashboard and the explain API)."""

    instance_id: str
    reason: dict


@dataclass
class DispatchState:
    """Mutable bookkeeping of the dispatcher, kept by the caller across calls.

    ``dispatched`` counts requests placed per instance (round_robin); ``rng`` is a ``random.Random``
    seeded with ``seed`` (random policy).
    """

    seed: int = 0
    dispatched: dict[str, int] = field(default_factory=dict)
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def record(self, instance_id: str) -> None:
        """Count one request placed on ``instance_id``. Call it after the request was really placed."""
        self.dispatched[instance_id] = self.dispatched.get(instance_id, 0) + 1

    def forget(self, instance_id: str) -> None:
        """Drop the count of an instance that left the cluster."""
        self.dispatched.pop(instance_id, None)


def choose_instance(
    loads: Sequence[InstanceLoad], request: RequestLoad, config: PolicyConfig, state: DispatchState
) -> DispatchDecision:
    """Choose the instance for ``request``. Raises :class:`NoInstanceAvailable` if none can take it."""
    candidates = [x for x in loads if not x.terminating]
    if not candidates:
        raise NoInstanceAvailable(
            f"no instance can take request {request.request_id!r}: "
            f"{len(loads)} instance(s), all terminating" if loads else "no instance is registered"
        )
    policy = config.dispatch
    if policy == "round_robin":
        # Fewest dispatched so far; ties go to the first in the given order (stable, deterministic).
        chosen = min(candidates, key=lambda x: state.dispatched.get(x.instance_id, 0))
        return DispatchDecision(
            chosen.instance_id,
            {"policy": policy, "dispatched_before": state.dispatched.get(chosen.instance_id, 0),
             "candidates": len(candidates)},
        )
    if policy == "random":
        chosen = candidates[state.rng.randrange(len(candidates))]
        return DispatchDecision(chosen.instance_id, {"policy": policy, "candidates": len(candidates)})

    # llumnix / infaas: freeness with the busy filter.
    high = config.priorities_enabled and request.priority >= Priority.HIGH
    # The headroom is fake usage that keeps *normal* requests away from the instances holding high-priority
    # ones; a high-priority request itself wants the instance whose real batch is lightest, so it sees
    # freeness without the headroom (see the module docstring).
    view = replace(config, priorities_enabled=False) if high else config
    scored = [(freeness(x, view), x) for x in candidates]
    not_busy = [s for s in scored if s[0] >= config.busy_freeness]
    pool = not_busy or scored
    # max() keeps the first of equal keys, so ties go to the first instance in the given order.
    best = max(pool, key=lambda s: s[0])
    runner_up = None
    for s in pool:
        if s[1] is not best[1] and (runner_up is None or s[0] > runner_up[0]):
            runner_up = s
    reason = {
        "policy": policy,
        "freeness": best[0],
        "runner_up": runner_up[1].instance_id if runner_up else None,
        "runner_up_freeness": runner_up[0] if runner_up else None,
        "busy_filtered": len(scored) - len(not_busy) if not_busy else 0,
        "all_busy": not not_busy,
        "candidates": len(candidates),
    }
    if high:
        reason["high_priority"] = True
        reason["high_priority_on_instance"] = best[1].num_high_priority
    return DispatchDecision(best[1].instance_id, reason)
