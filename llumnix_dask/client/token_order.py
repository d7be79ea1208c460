"""One request's token stream, put in order: each token once, by index, whatever instance sent it.

Token messages carry the index of their first token in the request's output. Around a live migration the
frontend hears from two instances (the source's last tokens, the destination's first ones) and their
messages may overtake each other; after a recovery it hears from a new instance that starts where the
stream stopped. :class:`TokenOrder` is the pure part of that: messages in, chunks to deliver out::

    >>> order = TokenOrder()
    >>> [c.index for c in order.accept(msg(1, [11], "b"), now=0.0).chunks]   # index 0 is missing: wait
    []
    >>> [c.index for c in order.accept(msg(0, [10], "a"), now=0.1).chunks]
    [0, 1]

It also notices a *duplicate copy* (tokens the client already has, sent by another instance than the one
it follows: a migration whose commit ack was lost left the request running twice) and how long a gap in
the indices has been open (a message that never came).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llumnix_dask.wire.frontend_api import TokenMessage


def msg(i: int, ids: list[int], inst: str, done: bool = False, reason: str | None = None, text: str | None = None,
        request_id: str = "r") -> TokenMessage:
    """A token message as an instance sends it (examples and tests)."""
    return TokenMessage(request_id, inst, i, list(ids), text if text is not None else "", done,
                        reason if reason or not done else "length")


@dataclass
class Chunk:
    """Tokens to hand to the consumer, in order. ``text`` is None when it must be decoded from the ids
    (a message that overlapped tokens already delivered, or a replay)."""

    index: int
    token_ids: list[int]
    text: str | None
    finished: bool
    finish_reason: str | None
    instance_id: str | None


@dataclass
class Accepted:
    chunks: list[Chunk] = field(default_factory=list)
    # (copy to stop, copy that stays) when a second live copy of the request showed up
    stop_copy: tuple[str, str] | None = None


class TokenOrder:
    """The ordering state of one request's stream."""

    def __init__(self, next_index: int = 0) -> None:
        self.next_index = next_index
        self.pending: dict[int, TokenMessage] = {}  # messages that arrived before an earlier one
        self.instances: list[str] = []  # every instance that delivered tokens, in order
        self.ignored: set[str] = set()  # instances whose messages no longer count (stopped copies, dead ones)
        self.finished = False
        self.finish_reason: str | None = None
        self.gap_since: float | None = None  # when messages started waiting for a missing index

    @property
    def following(self) -> str | None:
        """The instance the stream follows: the last one that delivered tokens."""
        return self.instances[-1] if self.instances else None

    def gap_age(self, now: float) -> float:
        """How long a missing index has been holding later messages back (0 when none is missing)."""
        return 0.0 if self.gap_since is None else now - self.gap_since

    def newest_sender(self) -> str | None:
        """The instance of the earliest message waiting behind the gap: it holds the request now."""
        if not self.pending:
            return None
        return self.pending[min(self.pending)].instance_id

    def ignore(self, instance_id: str) -> None:
        """Drop what ``instance_id`` still sends (its copy was stopped, or it died and the request moved on)."""
        self.ignored.add(instance_id)
        for i in [i for i, m in self.pending.items() if m.instance_id == instance_id]:
            del self.pending[i]
        if not self.pending:
            self.gap_since = None

    def accept(self, message: TokenMessage, now: float) -> Accepted:
        out = Accepted()
        if self.finished or message.instance_id in self.ignored:
            return out
        start = message.index
        if start > self.next_index:
            self.pending[start] = message
            if self.gap_since is None:
                self.gap_since = now
            return out
        self._deliver(message, out)
        # Deliver what waited for this one (messages that start at or before the next index), in order.
        while self.pending and not self.finished and min(self.pending) <= self.next_index:
            self._deliver(self.pending.pop(min(self.pending)), out)
        self.gap_since = now if self.pending and not self.finished else None
        return out

    def _deliver(self, message: TokenMessage, out: Accepted) -> None:
        start, ids, inst = message.index, message.token_ids, message.instance_id
        skip = self.next_index - start
        if skip >= len(ids) and not (message.finished and skip == len(ids)):
            out.stop_copy = out.stop_copy or self._duplicate_copy(inst)
            return  # already delivered
        new_ids = ids[skip:] if skip > 0 else ids
        if inst and inst != self.following and (new_ids or not self.instances):
            self.instances.append(inst)
        self.next_index += len(new_ids)
        finished = message.finished
        if finished:
            self.finished, self.finish_reason = True, message.finish_reason
            self.pending.clear()
        text = message.text if skip <= 0 else None
        out.chunks.append(Chunk(start + max(skip, 0), list(new_ids), text, finished, message.finish_reason, inst))

    def _duplicate_copy(self, inst: str | None) -> tuple[str, str] | None:
        """A second live copy sent tokens the client has: stop the copy on the instance the request joined last.

        Both copies yield the same tokens (sampling is a function of seed and position); the one that stays
        is the earlier one, as in the migration protocol and the scheduler's records.
        """
        follow = self.following
        if not inst or not follow or inst == follow or inst in self.ignored or follow in self.ignored:
            return None
        first = {}
        for i, name in enumerate(self.instances):
            first.setdefault(name, i)
        victim, survivor = (inst, follow) if first.get(inst, len(first) + 1) > first[follow] else (follow, inst)
        self.ignore(victim)
        return victim, survivor
