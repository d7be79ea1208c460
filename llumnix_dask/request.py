"""The request model: plain data shared by the engines, the policies, the simulator and the cluster.

A request's status changes only through :meth:`Request.transition`, which checks the move against
``TRANSITIONS`` and records a :class:`RequestEvent` that the dashboard and the tests read::

    >>> r = Request.new([1, 2, 3], SamplingParams(max_tokens=4))
    >>> r.transition(RequestStatus.RUNNING, now=1.0)
    >>> r.status
    <RequestStatus.RUNNING: 'running'>
    >>> r.transition(RequestStatus.WAITING, now=2.0)  # preempted: back to the queue
    >>> [e.status.value for e in r.events]
    ['waiting', 'running', 'waiting']
"""

from __future__ import annotations

import enum
import itertools
import math
import uuid
from dataclasses import dataclass, field
from typing import Any


class Priority(enum.IntEnum):
    """Scheduling priority of a request. HIGH requests run on lightly loaded instances."""

    NORMAL = 0
    HIGH = 1

    @classmethod
    def parse(cls, value: "Priority | int | str") -> "Priority":
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                raise ValueError(f"priority: unknown priority {value!r}; use 'normal' or 'high'") from None
        try:
            return cls(int(value))
        except (ValueError, TypeError):
            raise ValueError(f"priority: unknown priority {value!r}; use 0 (normal) or 1 (high)") from None


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature=0`` is greedy; ``seed`` makes sampling reproducible
    (and so identical across a live migration)."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be an integer >= 1, got {self.max_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or math.isnan(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k: must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p!r}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class RequestStatus(str, enum.Enum):
    WAITING = "waiting"  # queued on an instance (new, or preempted and waiting for recompute)
    RUNNING = "running"  # in the batch, has KV blocks
    MIGRATING = "migrating"  # paused on the source for the last migration stage
    FINISHED = "finished"
    ABORTED = "aborted"

    @property
    def done(self) -> bool:
        return self in (RequestStatus.FINISHED, RequestStatus.ABORTED)


TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    RequestStatus.WAITING: frozenset({RequestStatus.RUNNING, RequestStatus.ABORTED, RequestStatus.WAITING}),
    RequestStatus.RUNNING: frozenset(
        {RequestStatus.WAITING, RequestStatus.MIGRATING, RequestStatus.FINISHED, RequestStatus.ABORTED}
    ),
    RequestStatus.MIGRATING: frozenset({RequestStatus.RUNNING, RequestStatus.ABORTED, RequestStatus.FINISHED}),
    RequestStatus.FINISHED: frozenset(),
    RequestStatus.ABORTED: frozenset(),
}


class InvalidTransition(RuntimeError):
    pass


@dataclass(frozen=True)
class RequestEvent:
    time: float
    status: RequestStatus
    detail: str = ""


_counter = itertools.count()


def new_request_id() -> str:
    return f"req-{next(_counter)}-{uuid.uuid4().hex[:8]}"


@dataclass
class Request:
    """One generation request and everything measured about it.

    Token timestamps use whichever clock the caller passes (wall time in the cluster, simulated time in
    the simulator).
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    priority: Priority = Priority.NORMAL
    # Latency objective in seconds for time-to-first-token (None = no SLO).
    slo_ttft_s: float | None = None
    prompt: str | None = None
    arrival_time: float = 0.0
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    first_token_time: float | None = None
    finish_time: float | None = None
    finish_reason: str | None = None  # "length", "stop", "abort"
    num_preemptions: int = 0
    num_migrations: int = 0
    instance_id: str | None = None
    events: list[RequestEvent] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(
        cls,
        prompt_token_ids: list[int],
        sampling: SamplingParams | None = None,
        *,
        priority: Priority | int | str = Priority.NORMAL,
        slo_ttft_s: float | None = None,
        request_id: str | None = None,
        arrival_time: float = 0.0,
        prompt: str | None = None,
    ) -> "Request":
        if len(prompt_token_ids) == 0:
            raise ValueError("prompt: must not be empty")
        if slo_ttft_s is not None and slo_ttft_s <= 0:
            raise ValueError(f"slo_ttft_s: must be > 0, got {slo_ttft_s!r}")
        req = cls(
            request_id=request_id or new_request_id(),
            prompt_token_ids=list(prompt_token_ids),
            sampling=sampling or SamplingParams(),
            priority=Priority.parse(priority),
            slo_ttft_s=slo_ttft_s,
            prompt=prompt,
            arrival_time=arrival_time,
        )
        req.events.append(RequestEvent(arrival_time, RequestStatus.WAITING, "arrived"))
        return req

    # -- state -------------------------------------------------------------------------------------
    def transition(self, new: RequestStatus, now: float, detail: str = "") -> None:
        if new not in TRANSITIONS[self.status]:
            raise InvalidTransition(f"request {self.request_id}: {self.status.value} -> {new.value} is not allowed")
        if self.status is RequestStatus.RUNNING and new is RequestStatus.WAITING:
            self.num_preemptions += 1
        self.status = new
        self.events.append(RequestEvent(now, new, detail))
        if new.done:
            self.finish_time = now

    def append_token(self, token_id: int, now: float) -> None:
        self.output_token_ids.append(int(token_id))
        self.token_times.append(now)
        if self.first_token_time is None:
            self.first_token_time = now

    # -- derived -----------------------------------------------------------------------------------
    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def ttft(self) -> float | None:
        """Prefill latency: time to first token, queueing included."""
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        """Decode latency: mean time per output token after the first."""
        if len(self.token_times) < 2:
            return None
        return (self.token_times[-1] - self.token_times[0]) / (len(self.token_times) - 1)

    @property
    def e2e(self) -> float | None:
        return None if self.finish_time is None else self.finish_time - self.arrival_time
