"""Messages the global scheduler (``llumnix_dask.scheduler.plugin``) answers on the Dask scheduler.

================================== ================================= =======================================
message (handler)                  sender                            reply
================================== ================================= =======================================
:class:`ClaimInstanceId`           starting worker                   ``str``
:class:`RegisterInstance`          worker plugin                     :class:`Registered`
:class:`LoadReport`                worker plugin (batched stream)    -
:class:`ReportLoads`               instances outside Dask (benches)  None
:class:`DispatchBatch`             frontend                          ``list[Placement]``
:class:`ReportFinished`            frontend                          None
:class:`AbortWhere`                frontend                          :class:`AbortResult`
:class:`AskProgress`               frontend (health check)           ``list[Progress]``
:class:`ForceMigration`            user (``Cluster.migrate``)        :class:`MigrationReport`
:class:`GetPolicy`                 user, panel                       ``PolicyConfig``
:class:`SetPolicy`                 user, panel                       :class:`PolicyReply`
:class:`GetInstances`              user, scaling client              ``list[InstanceRow]``
:class:`GetScalingPlan`            scaling client                    :class:`ScalingPlan`
:class:`SetTarget`                 scaling client                    :class:`Ack`
:class:`Drain`                     scaling client                    :class:`Drained`
:class:`GetSnapshot`               dashboards, ``up`` status         ``dict`` (see ``scheduler.views``)
:class:`Explain`                   user                              ``list[dict]`` (decision rows)
:class:`GetMigrations`             user                              ``list[dict]`` (migration log rows)
================================== ================================= =======================================

The last three are read-only views for people (tables, plots), documented where they are built.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec

from llumnix_dask.config import PolicyConfig
from llumnix_dask.policy.load import InstanceLoad
from llumnix_dask.wire.codec import Message
from llumnix_dask.wire.worker_api import Ack, MigrationReport, Progress, ProgressQuery

__all__ = [
    "AbortResult", "AbortWhere", "Ack", "AskProgress", "ClaimInstanceId", "DispatchBatch", "Drain", "Drained",
    "Explain", "FinishedRequest", "ForceMigration", "GetInstances", "GetMigrations", "GetPolicy",
    "GetScalingPlan", "GetSnapshot", "InstanceInfo", "InstanceRow", "LoadReport", "MigrationReport",
    "Placement", "PolicyReply", "Progress", "ProgressQuery", "Registered", "RegisterInstance", "ReportFinished",
    "ReportLoads", "RequestDemand", "Retiree", "ScalingPlan", "SetPolicy", "SetTarget",
]


# -- instances --------------------------------------------------------------------------------------------
class ClaimInstanceId(Message):
    """A unique instance id from ``base`` (a restarted worker gets a fresh one: ``base-r1``, ...)."""

    op: ClassVar[str] = "llumnix_claim_instance_id"

    base: str


class InstanceInfo(msgspec.Struct, kw_only=True):
    """What an instance runs, shown in instance tables; the frontends read ``max_model_len``."""

    backend: str = ""
    model: str = ""
    device: str = "cpu"
    block_size: int | None = None
    num_blocks: int | None = None
    max_model_len: int | None = None  # the longest prompt + output it serves
    build_s: float = 0.0
    migration: bool = False  # it serves the migration endpoints
    migration_watermark_blocks: int = 0  # free blocks it keeps when it takes a migrating request


class RegisterInstance(Message):
    op: ClassVar[str] = "llumnix_register_instance"

    instance_id: str
    address: str
    load: InstanceLoad
    name: str | int | None = None
    info: InstanceInfo = msgspec.field(default_factory=InstanceInfo)


class Registered(Message):
    policy: PolicyConfig


class LoadReport(Message):
    """An instance's load after its engine steps, over its worker's batched stream to the scheduler."""

    op: ClassVar[str] = "llumnix_instance_load"

    load: InstanceLoad


class ReportLoads(Message):
    op: ClassVar[str] = "llumnix_report_loads"

    loads: list[InstanceLoad]


# -- requests ---------------------------------------------------------------------------------------------
class RequestDemand(msgspec.Struct, kw_only=True):
    """What dispatch knows of a new request."""

    request_id: str
    num_prompt_tokens: int
    priority: int = 0
    arrival_time: float | None = None


class DispatchBatch(Message):
    """Place every request (one round trip for all the dispatches a frontend has pending)."""

    op: ClassVar[str] = "llumnix_dispatch_batch"

    requests: list[RequestDemand]


class Placement(Message):
    """Where a request goes; ``overloaded``: admission refused it (retry after ``retry_after_s``)."""

    status: Literal["OK", "overloaded", "error"] = "OK"
    instance_id: str = ""
    address: str = ""
    error: str = ""
    retry_after_s: float = 0.0
    decision_s: float = 0.0


class FinishedRequest(msgspec.Struct, frozen=True):
    """What a frontend reports about a request when it completes (the scheduler's latency statistics)."""

    request_id: str
    priority: int
    finish_time: float
    ttft: float | None
    tpot: float | None
    e2e: float | None
    num_output_tokens: int = 0
    num_migrations: int = 0
    finish_reason: str | None = None
    slo_ttft_s: float | None = None


class ReportFinished(Message):
    op: ClassVar[str] = "llumnix_request_finished"

    items: list[FinishedRequest]


class AbortWhere(Message):
    """Abort a request where it lives now (it may have migrated). With ``instance_id``: stop only the copy
    there (a duplicate the frontend found); the request lives on at ``survivor``."""

    op: ClassVar[str] = "llumnix_abort"

    request_id: str
    instance_id: str | None = None
    survivor: str | None = None


class AbortResult(Message):
    status: Literal["OK", "error"] = "OK"
    found: bool = False
    error: str = ""


class AskProgress(Message):
    """Where each request stands, asked of the instances holding them (one call per instance)."""

    op: ClassVar[str] = "llumnix_request_status"

    requests: list[ProgressQuery]


class ForceMigration(Message):
    """Migrate ``request_id`` now, to ``dst`` or the freest other instance (tests, demos)."""

    op: ClassVar[str] = "llumnix_migrate"

    request_id: str
    dst: str | None = None


# -- policy -----------------------------------------------------------------------------------------------
class GetPolicy(Message):
    op: ClassVar[str] = "llumnix_get_policy"


class SetPolicy(Message):
    """Replace knobs of the PolicyConfig (validated as a whole)."""

    op: ClassVar[str] = "llumnix_set_policy"

    updates: dict[str, Any]


class PolicyReply(Message):
    status: Literal["OK", "error"] = "OK"
    policy: PolicyConfig | None = None
    error: str = ""


# -- scaling ----------------------------------------------------------------------------------------------
class GetInstances(Message):
    op: ClassVar[str] = "llumnix_instances"


class InstanceRow(msgspec.Struct, kw_only=True):
    """One instance as tables show it."""

    instance_id: str
    address: str
    name: str | int | None = None
    num_running: int = 0
    num_waiting: int = 0
    used_blocks: int = 0
    total_blocks: int = 0
    kv_usage: float = 0.0
    virtual_usage: float = 0.0
    freeness: float = 0.0
    num_high_priority: int = 0
    num_preemptions: int = 0
    terminating: bool = False
    migrating: bool = False
    dispatched: int = 0
    last_report: float = 0.0
    backend: str = ""
    model: str = ""
    device: str = ""
    max_model_len: int | None = None


class GetScalingPlan(Message):
    op: ClassVar[str] = "llumnix_scaling_plan"


class Retiree(msgspec.Struct, kw_only=True):
    """A drained instance whose worker can stop."""

    instance_id: str
    address: str
    name: str | int | None = None


class ScalingPlan(Message):
    target: int | None = None
    active: int = 0  # instances not draining
    total: int = 0
    retire: list[Retiree] = []


class SetTarget(Message):
    op: ClassVar[str] = "llumnix_set_target"

    n: int | None


class Drain(Message):
    """Mark instances terminating (``instance_ids``, or the ``count`` the policy picks); migration empties them."""

    op: ClassVar[str] = "llumnix_drain"

    instance_ids: list[str] = []
    count: int = 0


class Drained(Message):
    status: Literal["OK", "error"] = "OK"
    instance_ids: list[str] = []
    error: str = ""


# -- views ------------------------------------------------------------------------------------------------
class GetSnapshot(Message):
    op: ClassVar[str] = "llumnix_snapshot"

    n_migrations: int = 50
    n_decisions: int = 20


class Explain(Message):
    op: ClassVar[str] = "llumnix_explain"

    n: int = 20
    kind: str | None = None


class GetMigrations(Message):
    op: ClassVar[str] = "llumnix_migrations"

    n: int | None = None
