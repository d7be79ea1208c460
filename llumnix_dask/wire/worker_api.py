"""Messages an engine instance (the worker plugin and its migration endpoints) answers.

================================== ================================= =======================================
message (handler)                  sender                            reply
================================== ================================= =======================================
:class:`AddRequest`                frontend                          :class:`Added`
:class:`AbortRequest`              frontend, global scheduler        :class:`Ack`
:class:`MigrateOut`                global scheduler                  :class:`MigrationReport`
:class:`RequestTokens`             global scheduler (health checks)  ``list[Progress]``
:class:`Reserve`                   migration source                  ``bool``
:class:`SendBlocks`                migration source (+ ``buffers``)  None
:class:`Commit`                    migration source (+ ``buffers``)  ``bool``
:class:`AbortMigration`            migration source                  ``bool``
:class:`Enqueue`                   migration source                  ``bool``
:class:`NcclInit`                  migration source (GPU)            None
:class:`NcclBlocks`                migration source (GPU)            None
================================== ================================= =======================================

KV blocks never go inside a message: they travel beside it as raw frames (``buffers``, see
``llumnix_dask.migration.transport``), or over NCCL described by :class:`BufferMeta`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec

from llumnix_dask.config import PolicyConfig
from llumnix_dask.engine.base import MigrationState
from llumnix_dask.policy.load import InstanceLoad
from llumnix_dask.request import Request
from llumnix_dask.wire.codec import Message


class Ack(Message):
    status: Literal["OK", "error"] = "OK"
    error: str = ""


# -- requests ---------------------------------------------------------------------------------------------
class AddRequest(Message):
    """Queue ``request`` on the instance; its tokens stream to the frontend at ``frontend``."""

    op: ClassVar[str] = "llumnix_add_request"

    request: Request
    frontend: str | None = None


class Added(Message):
    status: Literal["OK", "error"] = "OK"
    instance_id: str = ""
    error: str = ""


class AbortRequest(Message):
    """Stop a request on this instance (its client went away, or it is a duplicate copy)."""

    op: ClassVar[str] = "llumnix_abort"

    request_id: str


class ProgressQuery(msgspec.Struct, kw_only=True):
    request_id: str
    start: int = 0  # the first output index the asker is missing


class Progress(Message):
    """Where a request stands on the instance that holds it: the output tokens from ``start`` on that it has
    sent, and whether it finished. ``unknown``: no instance holds it; ``error``: its instance is unreachable."""

    status: Literal["OK", "unknown", "error"] = "OK"
    start: int = 0
    ids: list[int] = []
    done: bool = False
    reason: str | None = None
    instance_id: str | None = None
    error: str = ""


class RequestTokens(Message):
    op: ClassVar[str] = "llumnix_request_tokens"

    requests: list[ProgressQuery]


# -- live migration: source side --------------------------------------------------------------------------
class MigrateOut(Message):
    """Migrate ``request_id`` (None: the instance picks one by the migration policy, against the
    destination's ``dst_load``) to the instance at ``dst_address``."""

    op: ClassVar[str] = "llumnix_migrate_out"

    dst_address: str
    request_id: str | None = None
    dst_instance_id: str | None = None
    dst_load: InstanceLoad | None = None
    reason: str = ""
    policy: PolicyConfig | None = None


class MigrationReport(Message):
    """How one migration ended, for the scheduler's migration log (fields left None were not reached)."""

    ok: bool = False
    request_id: str | None = None
    reason: str = ""
    migration_id: str | None = None
    src: str | None = None
    dst: str | None = None
    downtime_s: float | None = None
    total_s: float | None = None
    duration_s: float | None = None
    num_kv_tokens: int | None = None
    resume_index: int | None = None
    queued: bool | None = None
    num_stages: int | None = None
    blocks: int | None = None
    bytes: int | None = None
    transport: str | None = None  # the path the blocks took: "dask" (host-staged over Dask comm), "nccl"

    def details(self) -> dict[str, Any]:
        """The fields beyond ok / request_id / reason that were filled in."""
        return {k: v for k, v in msgspec.structs.asdict(self).items()
                if v is not None and k not in ("ok", "request_id", "reason")}


# -- live migration: destination side (``llumnix_dask.migration.transport``) ------------------------------
class Reserve(Message):
    op: ClassVar[str] = "llumnix_migration_reserve"

    migration_id: str
    request_id: str
    num_blocks: int


class SendBlocks(Message):
    """One stage's blocks; ``counts[k]`` blocks are in buffer ``k`` (frames beside the message)."""

    op: ClassVar[str] = "llumnix_migration_blocks"

    migration_id: str
    start: int
    counts: list[int]


class Commit(Message):
    """The last stage (its blocks beside the message) and the request's state: the destination adopts it."""

    op: ClassVar[str] = "llumnix_migration_commit"

    migration_id: str
    state: MigrationState
    counts: list[int] = []


class AbortMigration(Message):
    op: ClassVar[str] = "llumnix_migration_abort"

    migration_id: str
    reason: str = ""


class Enqueue(Message):
    """A request that never started moves between queues (no KV to copy)."""

    op: ClassVar[str] = "llumnix_migration_enqueue"

    migration_id: str
    request: Request


MIGRATION_OPS = tuple(m.op for m in (Reserve, SendBlocks, Commit, AbortMigration, Enqueue))


# -- GPU transport (``llumnix_dask.migration.nccl``) -------------------------------------------------------
class NcclInit(Message):
    """Join the two-rank NCCL communicator the source at ``src`` creates (``uid`` from ``get_unique_id``)."""

    op: ClassVar[str] = "llumnix_nccl_init"

    src: str
    uid: list[int]


class BufferMeta(msgspec.Struct):
    dtype: str
    shape: list[int]


class NcclBlocks(Message):
    op: ClassVar[str] = "llumnix_nccl_blocks"

    """Post the receives for buffers shaped ``metas`` from ``src``; scatter them into the migration's blocks."""

    src: str
    migration_id: str
    start: int | None
    counts: list[int]
    metas: list[BufferMeta]
