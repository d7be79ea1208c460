"""Migration policy: which instances exchange load, and which request moves (Llumnix paper, 4.4).

Pure code over :class:`InstanceLoad` snapshots. Every migration tick the global scheduler calls
:func:`pair_instances`; for each pair the source picks a request with :func:`select_request`::

    >>> from llumnix_dask.config import PolicyConfig
    >>> busy = InstanceLoad.from_requests("a", 100, 95, running=(RequestLoad("x", 50, num_tokens=800),
    ...                                                         RequestLoad("y", 45, num_tokens=700)))
    >>> idle = InstanceLoad("b", 100, 0)
    >>> [(p.src, p.dst) for p in pair_instances([busy, idle], PolicyConfig())]
    [('a', 'b')]
    >>> select_request(busy, idle, PolicyConfig()).request_id   # SR: the shortest one
    'y'

Pairing: sources are instances whose freeness is below ``migrate_out_freeness``, that hold preempted
requests waiting for recompute, or that are terminating (being drained; unless ``drain_by_migration`` is
off: then a draining instance only finishes what it holds); destinations are instances
whose freeness is above ``migrate_in_freeness``. The most loaded source is paired with the least loaded
destination, the second with the second, and so on. An instance already in a migration is skipped: at
most one migration per instance at a time. Nothing migrates when migration is disabled or the dispatch
policy is one that never migrates (infaas, round_robin, random).

Request selection (``request_selection``), over the source's requests that are not migrating and whose
blocks fit in the destination's free blocks (queued requests have no KV: moving them is cheap, they
count with their demand, which must fit beside the demand of the destination's own queue):

* ``SR`` shortest running request (fewest tokens) - least to copy, the default;
* ``LR`` longest running request (most tokens) - frees the most memory;
* ``LCR`` last-come running request (latest arrival); falls back to the last queued one;
* ``FCW`` first-come waiting request (the head of the queue, what de-fragmentation unblocks); falls
  back to the shortest running one.

With priorities enabled, normal requests are chosen before high-priority ones (a high-priority request
moves only when nothing else is eligible, and with ``migrate_high_priority`` off only off a draining
instance; an instance holding only high-priority requests is then no source: it would take a destination from
a source that has something to move). SR, LR and LCR move a running request when one is eligible -
freeing blocks on the source is what lets its blocked head-of-line request start (de-fragmentation) - and
fall back to the queued requests otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from llumnix_dask.config import NON_MIGRATING_POLICIES, PolicyConfig
from llumnix_dask.policy.load import InstanceLoad, RequestLoad, freeness
from llumnix_dask.request import Priority



@dataclass(frozen=True)
class MigrationPair:
    """Move one request from ``src`` to ``dst``; ``reason`` holds the freeness values that paired them."""

    src: str
    dst: str
    reason: dict


def pair_instances(loads: Sequence[InstanceLoad], config: PolicyConfig) -> list[MigrationPair]:
    """Pair overloaded (or draining) instances with underloaded ones, most loaded with least loaded."""
    if not config.migration_enabled or config.dispatch in NON_MIGRATING_POLICIES:
        return []
    sources: list[tuple[float, str, InstanceLoad]] = []
    destinations: list[tuple[float, InstanceLoad]] = []
    for load in loads:
        if load.migrating:
            continue
        f = freeness(load, config)
        if load.terminating:
            if load.num_requests > 0 and config.drain_by_migration:
                sources.append((f, "terminating", load))
        elif _nothing_to_move(load, config):
            continue  # it would take a destination from a source that can use it
        elif f < config.migrate_out_freeness and load.num_requests > 0:
            sources.append((f, "low_freeness", load))
        elif load.has_preempted:
            sources.append((f, "preempted", load))
        elif f > config.migrate_in_freeness:
            destinations.append((f, load))
    # Most loaded source first (terminating = -inf comes first); freest destination first.
    sources.sort(key=lambda s: s[0])
    destinations.sort(key=lambda d: -d[0])
    pairs = []
    for (sf, why, src), (df, dst) in zip(sources, destinations):
        pairs.append(
            MigrationPair(
                src.instance_id,
                dst.instance_id,
                {
                    "why": why,
                    "src_freeness": sf,
                    "dst_freeness": df,
                    "migrate_out_freeness": config.migrate_out_freeness,
                    "migrate_in_freeness": config.migrate_in_freeness,
                },
            )
        )
    return pairs


def _nothing_to_move(load: InstanceLoad, config: PolicyConfig) -> bool:
    """Every request on ``load`` is high-priority and high-priority requests do not move: an instance kept
    light for them looks overloaded (their headroom) but has nothing to give, so it is no source."""
    return (config.priorities_enabled and not config.migrate_high_priority and load.num_requests > 0
            and load.num_high_priority >= load.num_requests)


def select_request(
    src: InstanceLoad, dst: InstanceLoad, config: PolicyConfig, dst_reserve_blocks: int = 0
) -> RequestLoad | None:
    """The request to move from ``src`` to ``dst`` (None if nothing is eligible).

    Needs ``src.running`` / ``src.waiting`` filled in (build it with ``InstanceLoad.from_requests``).
    ``dst_reserve_blocks``: free blocks the destination keeps when it accepts a running request (its
    migration watermark); a plan that ignored it would be refused there, tick after tick.
    """
    room = dst.free_blocks - dst_reserve_blocks
    # A queued request that moves starts at once only if it fits beside what the destination's own queue
    # already needs; otherwise it would only wait there instead (and bounce on at a later tick).
    queue_room = dst.free_blocks - dst.waiting_demand_blocks
    running = [r for r in src.running if not r.migrating and r.blocks <= room]
    waiting = [r for r in src.waiting if not r.migrating and r.blocks <= queue_room]
    if config.priorities_enabled:
        # The headroom of a high-priority request is there to push the *other* requests away: move normal
        # requests first, a high-priority one only when nothing else is eligible.
        normal_running = [r for r in running if r.priority < Priority.HIGH]
        normal_waiting = [r for r in waiting if r.priority < Priority.HIGH]
        # A draining instance gives up its high-priority requests too, once no normal one is left.
        if normal_running or normal_waiting or not (config.migrate_high_priority or src.terminating):
            running, waiting = normal_running, normal_waiting
    rule = config.request_selection
    if rule == "SR":
        pool = running or waiting
        # Ties: the earlier-arrived one (it has waited longest on the overloaded instance).
        return min(pool, key=lambda r: (r.num_tokens, r.arrival_time)) if pool else None
    if rule == "LR":
        pool = running or waiting
        return max(pool, key=lambda r: (r.num_tokens, -r.arrival_time)) if pool else None
    if rule == "LCR":
        if running:
            return max(running, key=lambda r: r.arrival_time)
        return waiting[-1] if waiting else None
    # FCW
    if waiting:
        return waiting[0]
    return min(running, key=lambda r: (r.num_tokens, r.arrival_time)) if running else None
