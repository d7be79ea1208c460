"""What a migration attempt leaves behind: its stages, its outcome, the numbers the scheduler logs."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

COMMITTED = "committed"
REFUSED = "refused"


def new_migration_id() -> str:
    return f"mig-{uuid.uuid4().hex[:12]}"


@dataclass
class StageRecord:
    """One handshake + copy round of a migration."""

    index: int  # 1-based
    blocks: int
    bytes: int
    seconds: float
    paused: bool  # the last stage, copied while the request was out of the batch


@dataclass
class MigrationResult:
    """What happened to one migration attempt (also logged by the llumlet and the dashboard)."""

    migration_id: str
    request_id: str
    src: str
    dst: str
    outcome: str  # "committed", "refused" or "aborted:<why>"
    ok: bool = False  # outcome == "committed" (a plain field, so it survives asdict / msgpack)
    stages: list[StageRecord] = field(default_factory=list)
    downtime_s: float = 0.0  # the pause: from taking the request out of the batch to the commit ack
    total_s: float = 0.0
    num_kv_tokens: int = 0
    # Output tokens produced before the handover: the destination's first token has this index.
    resume_index: int = 0
    queued: bool = False  # a never-started request moved between queues (no KV)
    transport: str = ""  # how the blocks travelled: "dask" (host-staged over Dask comm), "in-process", "nccl"

    @property
    def committed(self) -> bool:
        return self.outcome == COMMITTED

    @property
    def blocks(self) -> int:
        return sum(s.blocks for s in self.stages)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
