"""Virtual usage and freeness of an instance (Llumnix paper, section 4.4).

Pure functions over frozen snapshots. An instance reports an :class:`InstanceLoad`; every policy
(dispatch, migration, scaling) reads it only through :func:`virtual_usage` and :func:`freeness`::

    >>> from llumnix_dask.config import PolicyConfig
    >>> load = InstanceLoad.from_requests("i0", total_blocks=100, used_blocks=30,
    ...                     running=(RequestLoad("a", 10), RequestLoad("b", 20)),
    ...                     waiting=(RequestLoad("c", 40),))
    >>> virtual_usage(load, PolicyConfig())        # 10 + 20 running, 40 queued demand
    70.0
    >>> freeness(load, PolicyConfig())             # (100 - 70) / 3 requests
    10.0

Definitions:

* a running request's virtual usage is the KV blocks it holds;
* with de-fragmentation on, the head-of-line queued request counts its full demand (blocks needed to
  start it), so an instance whose head-of-line request cannot start looks full and gets migrated from; the
  other queued requests count nothing (they only lower freeness through B); with it off no queued request
  counts (the physical view, which hides fragmentation);
* every high-priority request adds ``priority_headroom_blocks`` of fake usage so the instance that holds it
  stays lightly loaded (smaller batches, faster decode) and receives fewer new requests; with
  ``priority_instance_blocks`` set (the paper's form) an instance holding any high-priority request instead
  counts ``total_blocks - priority_instance_blocks`` of fake usage, once;
* a terminating instance has infinite usage: nothing is dispatched to it and it is migrated from first;
* freeness F = (M - sum V) / B with M the instance's total blocks and B the number of requests it holds
  (running + queued, at least 1): free blocks per request, i.e. how long the batch can keep decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from llumnix_dask.config import PolicyConfig
from llumnix_dask.request import Priority


@dataclass(frozen=True)
class RequestLoad:
    """What the policies see of one request on an instance."""

    request_id: str
    blocks: int  # running: blocks held; queued: blocks needed to start (its demand)
    priority: Priority = Priority.NORMAL
    num_tokens: int = 0  # tokens so far, prompt + output
    arrival_time: float = 0.0
    preempted: bool = False  # queued again after losing its blocks
    migrating: bool = False


@dataclass(frozen=True)
class InstanceLoad:
    """A snapshot of one instance, pushed to the global scheduler after engine steps.

    The aggregate fields are all the load formulas need (O(1) per instance, so the scheduler and the
    simulator can evaluate thousands of snapshots per second). ``running`` / ``waiting`` list the
    individual requests for migration's request selection; a cheap report may leave them empty.
    Build a consistent snapshot from request lists with :meth:`from_requests`.
    """

    instance_id: str
    total_blocks: int
    used_blocks: int
    num_running: int = 0
    num_waiting: int = 0
    running_blocks: int = 0  # blocks held by running requests
    waiting_demand_blocks: int = 0  # blocks the queued requests need to start
    hol_demand_blocks: int = 0  # demand of the head-of-line queued request
    num_high_priority: int = 0  # running + queued
    num_preempted_waiting: int = 0  # queued requests that lost their blocks to preemption
    terminating: bool = False
    migrating: bool = False  # a migration (in or out) is under way on this instance
    num_preemptions: int = 0  # total so far
    time: float = 0.0
    running: tuple[RequestLoad, ...] = ()
    waiting: tuple[RequestLoad, ...] = ()  # FCFS order: waiting[0] is the head of line

    @classmethod
    def from_requests(
        cls,
        instance_id: str,
        total_blocks: int,
        used_blocks: int,
        running: Sequence[RequestLoad] = (),
        waiting: Sequence[RequestLoad] = (),
        **kwargs: object,
    ) -> "InstanceLoad":
        running, waiting = tuple(running), tuple(waiting)
        return cls(
            instance_id=instance_id,
            total_blocks=total_blocks,
            used_blocks=used_blocks,
            num_running=len(running),
            num_waiting=len(waiting),
            running_blocks=sum(r.blocks for r in running),
            waiting_demand_blocks=sum(r.blocks for r in waiting),
            hol_demand_blocks=waiting[0].blocks if waiting else 0,
            num_high_priority=sum(1 for r in running + waiting if r.priority >= Priority.HIGH),
            num_preempted_waiting=sum(1 for r in waiting if r.preempted),
            running=running,
            waiting=waiting,
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def num_requests(self) -> int:
        return self.num_running + self.num_waiting

    @property
    def free_blocks(self) -> int:
        return self.total_blocks - self.used_blocks

    @property
    def has_preempted(self) -> bool:
        return self.num_preempted_waiting > 0


def virtual_usage(load: InstanceLoad, config: PolicyConfig) -> float:
    """Sum of the virtual usage of every request on the instance (``inf`` if it is terminating)."""
    if load.terminating:
        return math.inf
    total = load.running_blocks
    if config.defragmentation:
        # Only the head-of-line request: it is the one blocked by fragmentation, and counting it in full
        # makes the instance look full so migration frees room for it (paper section 4.4.1).
        total += load.hol_demand_blocks
    if config.priorities_enabled and load.num_high_priority:
        if config.priority_instance_blocks is not None:
            # The paper's form: the instance looks as if it had only priority_instance_blocks blocks.
            total += max(0, load.total_blocks - config.priority_instance_blocks)
        else:
            total += config.priority_headroom_blocks * load.num_high_priority
    return float(total)


def freeness(load: InstanceLoad, config: PolicyConfig) -> float:
    """Free blocks per request after virtual usage: F = (M - sum V) / B. ``-inf`` when terminating."""
    usage = virtual_usage(load, config)
    if math.isinf(usage):
        return -math.inf
    return (load.total_blocks - usage) / max(1, load.num_requests)


def with_dispatched(load: InstanceLoad, request: RequestLoad) -> InstanceLoad:
    """The load after one more request is queued on the instance.

    The global scheduler applies this to its copy right after a dispatch, so a burst that arrives between
    two load reports spreads out instead of piling onto the instance that looked freest.
    """
    return replace(
        load,
        num_waiting=load.num_waiting + 1,
        waiting_demand_blocks=load.waiting_demand_blocks + request.blocks,
        hol_demand_blocks=load.hol_demand_blocks if load.num_waiting else request.blocks,
        num_high_priority=load.num_high_priority + (request.priority >= Priority.HIGH),
        waiting=load.waiting + (request,) if load.waiting or not load.num_waiting else load.waiting,
    )

