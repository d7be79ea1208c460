"""The contract between processes: every message between frontends, the global scheduler and the instances.

* :mod:`~llumnix_dask.wire.codec` - how a typed message travels over Dask comms (``call``, ``handlers``).
* :mod:`~llumnix_dask.wire.scheduler_api` - what the global scheduler answers.
* :mod:`~llumnix_dask.wire.worker_api` - what an engine instance answers (requests, live migration).
* :mod:`~llumnix_dask.wire.frontend_api` - the token streams a frontend reads.

Each message class names its Dask handler (``Message.op``); its fields are the arguments, typed.
"""

from llumnix_dask.wire.codec import Message, call, handler, handlers, pack, stream_message, unpack

__all__ = ["Message", "call", "handler", "handlers", "pack", "stream_message", "unpack"]
