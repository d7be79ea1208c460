"""What the global scheduler keeps: one record per instance, its decisions (the explain log), planned migrations."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from llumnix_dask.policy.load import InstanceLoad, RequestLoad


@dataclass
class InstanceRecord:
    """One registered engine instance as the global scheduler sees it."""

    instance_id: str
    address: str  # the Dask worker's address: token streams and migrations go there
    load: InstanceLoad
    registered_at: float
    name: Any = None  # the Dask worker's name (what a cluster manager retires)
    info: dict = field(default_factory=dict)  # backend, model, device, block_size
    terminating: bool = False
    dispatched: int = 0  # requests dispatched here so far
    migrating: bool = False  # a migration this scheduler ordered is under way (as source or destination)
    last_report: float = 0.0
    freeness: float = 0.0  # of ``load`` under the current policy, kept up to date by the scheduler
    # Requests sent here (dispatched or migrating in) that its load reports do not show yet: id -> (load, when).
    # ``load`` is always ``report`` (the latest report as received) with these applied.
    pending: dict[str, tuple[RequestLoad, float]] = field(default_factory=dict)
    report: InstanceLoad | None = None
    # Requests migrating in (planned here, not finished): no report counts them before their commit.
    incoming: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Decision:
    """One entry of the explain log."""

    time: float
    kind: str  # "dispatch" | "migration" | "scaling" | "drain" | "policy" | "register" | "remove"
    reason: Any  # a sentence, or the dict of numbers the policy decided on
    request_id: str | None = None
    instance_id: str | None = None
    target_id: str | None = None  # migration destination

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PlannedMigration:
    src: InstanceRecord
    dst: InstanceRecord
    request_id: str | None  # None: the source llumlet picks with the request-selection policy
    reason: str


def describe(reason: Any) -> str:
    if isinstance(reason, dict):
        return ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in reason.items())
    return str(reason)
