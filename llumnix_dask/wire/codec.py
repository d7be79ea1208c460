"""How typed messages travel over Dask comms: every call is one :class:`Message` subclass that names its handler.

A message is a ``msgspec`` struct. On the wire it is plain msgpack data (``pack``), so a process that reads it
needs no pickle and no import of the sender's classes; the receiver rebuilds the typed record (``unpack``),
dataclasses inside it (Request, InstanceLoad, PolicyConfig, MigrationState) included::

    >>> class Ping(Message):
    ...     op: ClassVar[str] = "example_ping"
    ...     n: int
    >>> Ping.op, unpack(Ping, pack(Ping(n=3)))
    ('example_ping', Ping(n=3))

Callers ``await call(rpc, Ping(n=3), reply=Pong)``; servers install ``handlers(...)`` built with
:func:`handler`, which unpacks the message, runs the method and packs its reply. Stream messages (a worker's
load reports, token batches) go through ``stream_message`` / :func:`handler` the same way.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar, TypeVar

import msgspec

T = TypeVar("T")
M = TypeVar("M", bound="Message")


class Message(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A typed message. A subclass that is a call names its handler: ``op: ClassVar[str] = "llumnix_x"``."""

    op: ClassVar[str] = ""


def _local_only(obj: Any) -> Any:
    """Objects that live in one process only (an engine's per-request state kept in ``Request.metadata``)
    travel as null; anything else that is not plain data is a programming error, reported by type."""
    if getattr(type(obj), "wire_local", False):
        return None
    raise TypeError(f"a {type(obj).__name__} cannot travel between processes: messages carry plain data")


def pack(obj: Any) -> Any:
    """msgpack-ready builtins (dicts, lists, str, numbers) of a message, a record, or a list of them."""
    return msgspec.to_builtins(obj, enc_hook=_local_only)


def unpack(kind: type[T] | Any, data: Any) -> T:
    """The typed value of ``kind`` (a Message, a dataclass, ``list[...]``) from :func:`pack`'s output."""
    return msgspec.convert(data, kind)


async def call(rpc: Any, msg: Message, reply: type[T] | Any = None, **frames: Any) -> T:
    """Send ``msg`` to the handler it names on ``rpc`` (a Dask rpc / connection-pool entry); ``reply``
    is the type of the answer (None: returned as it came). ``frames`` travel beside the message as they are
    (binary payloads wrapped in ``to_serialize``: KV blocks); the handler names them in ``extras``."""
    raw = await getattr(rpc, msg.op)(msg=pack(msg), **frames)
    return raw if reply is None else unpack(reply, raw)


def stream_message(msg: Message) -> dict:
    """A message for a Dask batched stream (``BatchedSend.send`` / ``worker.batched_send``)."""
    return {"op": msg.op, "msg": pack(msg)}


def handler(kind: type[M], fn: Callable[..., Any], extras: tuple[str, ...] = ()) -> Callable[..., Any]:
    """A Dask handler for messages of ``kind``: ``fn`` gets the typed message (and the keyword arguments
    named in ``extras``: frames sent beside it, or what Dask adds, such as a stream's ``comm_key``); its
    answer (a message, a record, a list of them, or plain data) is packed on the way back. A plain ``fn``
    gives a plain handler (Dask runs a stream's plain handlers in order, inline), a coroutine function an
    async one."""
    def args(kw: dict) -> dict:
        return {k: kw[k] for k in extras if k in kw}

    if inspect.iscoroutinefunction(fn):

        async def handle_async(msg: Any = None, **kw: Any) -> Any:
            return pack(await fn(unpack(kind, msg), **args(kw)))

        handle_async.__name__ = kind.op
        return handle_async

    def handle(msg: Any = None, **kw: Any) -> Any:
        return pack(fn(unpack(kind, msg), **args(kw)))

    handle.__name__ = kind.op
    return handle


def handlers(*pairs: tuple[type[Message], Callable[[Any], Any]]) -> dict[str, Callable[..., Any]]:
    """``{op: handler}`` for ``(MessageType, fn)`` pairs, ready for ``server.handlers.update(...)``."""
    return {kind.op: handler(kind, fn) for kind, fn in pairs}
