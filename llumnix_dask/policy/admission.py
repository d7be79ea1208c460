"""Admission control: whether the cluster takes one more request now, or asks the client to come back.

A bounded global queue keeps memory and waiting times bounded under overload: a normal request is refused
when the requests already queued on the instances (and sent to them, not yet seen queued) reach
``queue_limit_per_instance`` times the number of serving instances; a high-priority request only at the
larger ``high_priority_queue_limit_per_instance``, so important work still gets in while the cluster sheds
the rest. A refusal carries how long to wait: the excess queue over the rate at which requests finish.

    >>> from llumnix_dask.config import PolicyConfig
    >>> policy = PolicyConfig(queue_limit_per_instance=4, high_priority_queue_limit_per_instance=8)
    >>> admit(priority=0, queued=8, num_instances=2, policy=policy, finish_rate=lambda: 2.0).admitted
    False
    >>> admit(priority=1, queued=8, num_instances=2, policy=policy, finish_rate=lambda: 2.0).admitted
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from llumnix_dask.config import PolicyConfig
from llumnix_dask.request import Priority

# Bounds of the advertised wait before a retry (seconds).
MIN_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 60.0


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reason: str
    retry_after_s: float = 0.0


def admit(
    priority: int, queued: int, num_instances: int, policy: PolicyConfig, finish_rate: Callable[[], float]
) -> Admission:
    """Admit a request of ``priority`` while ``queued`` requests wait on ``num_instances`` serving instances.

    ``finish_rate()`` (requests finished per second lately) is only asked for when the request is refused.
    """
    high = policy.priorities_enabled and priority >= Priority.HIGH
    per_instance = policy.high_priority_queue_limit_per_instance if high else policy.queue_limit_per_instance
    if per_instance is None or num_instances == 0:
        return Admission(True, "no queue limit")
    limit = per_instance * num_instances
    if queued < limit:
        return Admission(True, f"{queued} queued < limit {limit}")
    excess, rate = queued - limit + 1, finish_rate()
    wait = excess / rate if rate > 0 else MAX_RETRY_AFTER_S
    retry = min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, math.ceil(wait)))
    kind = "high-priority" if high else "normal"
    return Admission(False, f"the cluster is overloaded: {queued} requests queued, the limit for {kind} requests is "
                            f"{limit} ({per_instance} per instance)", float(retry))
