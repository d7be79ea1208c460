"""Messages a frontend receives: token streams from the instances.

An instance opens one comm to each frontend it serves (``OpenTokenStream``) and writes :class:`TokenBatch`
messages on it through a ``BatchedSend``; each batch carries the :class:`TokenMessage` s of one or more
engine steps, in order.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from llumnix_dask.wire.codec import Message

OPEN_TOKEN_STREAM_OP = "llumnix_token_stream"  # the frontend's handler that reads a stream


class TokenMessage(msgspec.Struct, array_like=True, omit_defaults=True):
    """New output tokens of one request from one instance (a list on the wire: one per token step).

    ``index`` is the output position of ``token_ids[0]``; ``error`` set: the request failed there.
    """

    request_id: str
    instance_id: str | None = None
    index: int = 0
    token_ids: list[int] = []
    text: str | None = ""
    finished: bool = False
    finish_reason: str | None = None
    error: str | None = None


class TokenBatch(Message):
    op: ClassVar[str] = "llumnix_tokens"

    messages: list[TokenMessage]
