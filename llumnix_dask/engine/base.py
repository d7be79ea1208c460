"""The one protocol every engine backend implements (nano, vLLM, sim).

An engine is a continuous-batching, paged-KV engine instance. It is driven by one step-loop thread
(the llumlet's, or the simulator's event loop); the migration methods may be called from another thread
while it steps, so implementations guard their state with a lock.

Life of a request inside an engine::

    engine.add_request(req)          # queued (WAITING), FCFS by arrival_time
    outs = engine.step()             # prefill / decode one step for the batch -> StepOutput per request
    ...                              # until an output has finished=True (length / stop) or abort()

Live migration (see ``llumnix_dask.migration.source``) uses the rest. On the source::

    ids = engine.request_blocks(rid)        # block table so far; full blocks never change again
    buf = engine.export_blocks(ids[a:b])    # contiguous copy of those blocks, while decoding goes on
    state = engine.pause(rid)               # last stage: the request leaves the batch (MIGRATING)
    engine.release(rid)                     # after the destination committed: drop it, free blocks
    engine.resume(rid)                      # or, if the migration failed: back into the batch

and on the destination::

    ids = engine.reserve_blocks(n, watermark)   # pre-allocate, or None = refuse
    engine.import_blocks(ids, buf)
    engine.commit_migrated(state, all_ids)      # the request joins the batch and decodes on from here
    engine.free_blocks(ids)                     # or, if the migration was aborted
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Container, Protocol, Sequence, runtime_checkable

from llumnix_dask.policy.load import InstanceLoad
from llumnix_dask.request import Request, RequestStatus


@dataclass
class StepOutput:
    """What one engine step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    text_delta: str = ""  # detokenized text of new_token_ids ("" for engines without a tokenizer)
    finished: bool = False
    finish_reason: str | None = None  # "length", "stop", "abort"


@dataclass
class MigrationState:
    """Everything the destination needs, besides the KV blocks, to continue a paused request exactly.

    ``request`` carries the prompt, the tokens generated so far, their timestamps and the sampling params;
    sampling is a function of (seed, position) so no random-generator state has to travel.
    ``num_kv_tokens`` tokens have KV in the blocks; the remaining token(s) are fed by the next step.
    """

    request: Request
    num_kv_tokens: int
    block_ids: list[int]
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific (e.g. detokenizer offsets)


@runtime_checkable
class EngineBackend(Protocol):
    instance_id: str
    block_size: int
    num_blocks: int

    # -- serving -------------------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        """Queue a request (WAITING). Raises ValueError for a request this engine can never serve."""

    def abort(self, request_id: str) -> bool:
        """Drop a request wherever it is; frees its blocks. False if unknown."""

    def step(self) -> list[StepOutput]:
        """Run one scheduler iteration (prefill and/or decode) and return the new tokens."""

    def has_work(self) -> bool:
        """True while any request is queued or running."""

    def load(self) -> InstanceLoad:
        """Snapshot for the policies."""

    def get_request(self, request_id: str) -> Request | None:
        """The live request object (None once finished, aborted or released)."""

    # -- migration: source side ----------------------------------------------------------------------
    def request_blocks(self, request_id: str) -> list[int]:
        """Block table of a RUNNING request (a copy). Raises KeyError if it is not running here."""

    def num_kv_tokens(self, request_id: str) -> int:
        """Tokens of the request whose KV is written in its blocks."""

    def export_blocks(self, block_ids: Sequence[int]) -> Any:
        """Gather those blocks into one contiguous buffer (a torch tensor for tensor engines)."""

    def pause(self, request_id: str) -> MigrationState:
        """Take a RUNNING request out of the batch (status MIGRATING) and snapshot its state."""

    def resume(self, request_id: str) -> None:
        """Put a paused request back into the batch (migration failed)."""

    def release(self, request_id: str) -> None:
        """Forget a paused request after the destination committed it; frees its blocks."""

    def take_waiting(self, request_id: str) -> Request:
        """Remove a queued (never started) request so it can join another instance's queue."""

    # -- migration: destination side ------------------------------------------------------------------
    def reserve_blocks(self, n: int, watermark: int = 0) -> list[int] | None:
        """Allocate n free blocks unless fewer than ``watermark`` would remain; None = refuse."""

    def import_blocks(self, block_ids: Sequence[int], buffer: Any) -> None:
        """Scatter a buffer made by export_blocks into these (reserved) blocks."""

    def free_blocks(self, block_ids: Sequence[int]) -> None:
        """Return reserved blocks to the free list (migration aborted)."""

    def commit_migrated(self, state: MigrationState, block_ids: Sequence[int]) -> None:
        """Adopt a migrated request whose KV now lies in ``block_ids``; it decodes on from the next step."""


def check_new_request(
    req: Request, *, instance_id: str, already_here: bool, vocab_size: int, context: int, context_note: str,
    has_tokenizer: bool,
) -> None:
    """Raise ``ValueError`` (a message fit for the client) for a request an engine cannot take: already there,
    not waiting, an empty prompt, token ids outside the vocabulary, a prompt that leaves no room to generate
    within ``context`` tokens (``context_note`` says where that limit comes from), or stop strings without
    a tokenizer."""
    rid = req.request_id
    if already_here:
        raise ValueError(f"request {rid}: already on instance {instance_id}")
    if req.status is not RequestStatus.WAITING:
        raise ValueError(f"request {rid}: must be waiting to be added, is {req.status.value}")
    if not req.prompt_token_ids:
        raise ValueError("prompt: must not be empty")
    if min(req.prompt_token_ids) < 0 or max(req.prompt_token_ids) >= vocab_size:
        raise ValueError(f"prompt: token ids must be in [0, {vocab_size}) for this model")
    if req.num_tokens >= context:
        raise ValueError(
            f"prompt: {req.num_tokens} tokens do not fit the context of {context} tokens ({context_note}); "
            "shorten the prompt"
        )
    if req.sampling.stop and not has_tokenizer:
        raise ValueError("stop: stop strings need a tokenizer, and this model has no tokenizer.json")


def check_reserved(reserved: Container[int], block_ids: Sequence[int], what: str) -> None:
    """Raise ``ValueError`` unless every block of ``block_ids`` is in ``reserved`` (the blocks an engine holds
    for incoming migrations): ``what`` names the call that was handed blocks it never reserved."""
    missing = [b for b in block_ids if b not in reserved]
    if missing:
        raise ValueError(f"{what}: blocks {missing} were not reserved")
