"""Per-request state of the simulated engine (:class:`SimSeq`); it travels with a request on migration."""

from __future__ import annotations

import zlib

from llumnix_dask.request import Priority, Request

VOCAB = 32000


class SimSeq:
    """Per-request engine state; it travels with the request (``request.metadata["sim_seq"]``) on migration
    within a process. Between processes it stays behind (``wire_local``): the destination rebuilds it."""

    wire_local = True

    __slots__ = ("request", "prompt_len", "max_tokens", "generated", "total", "block_ids", "capacity", "high",
                 "active", "owner", "preempted_at", "preemption_loss_s", "token_seed", "admitted_at", "load_cache")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.prompt_len = request.num_prompt_tokens
        self.max_tokens = request.sampling.max_tokens
        # Tokens it already has (generated elsewhere: a migration across processes, or a recovery).
        self.generated = request.num_output_tokens
        self.total = self.prompt_len + self.generated  # prompt + generated tokens (kept in step with ``generated``)
        self.block_ids: list[int] = []
        self.capacity = 0  # tokens the blocks can hold
        self.high = request.priority >= Priority.HIGH
        self.active = False  # in the running batch of ``owner``
        self.owner: object = None  # the engine whose batch it is in
        self.preempted_at: float | None = None
        self.preemption_loss_s = 0.0  # wait until re-prefill + recompute, summed over preemptions
        seed = request.sampling.seed
        self.token_seed = seed if seed is not None else zlib.crc32(request.request_id.encode())
        self.admitted_at = 0.0
        self.load_cache: object = None  # the RequestLoad last reported (the engine rebuilds it when it changes)

    @classmethod
    def of(cls, request: Request) -> "SimSeq":
        """The request's state: the one it carries (moved within a process), or a new one."""
        seq = request.metadata.get("sim_seq")
        if not isinstance(seq, SimSeq) or seq.request is not request:
            seq = request.metadata["sim_seq"] = cls(request)
        return seq

    def __getstate__(self) -> dict:
        # The owning engine (its lock, its queues) stays behind when the state crosses a process boundary
        # in a migration: the destination sets itself as owner on commit.
        state = {name: getattr(self, name) for name in self.__slots__}
        state["owner"] = None
        state["load_cache"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def token_id(self, position: int) -> int:
        return (self.token_seed * 1_000_003 + position * 7_919) % VOCAB
