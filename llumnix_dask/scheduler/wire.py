"""How objects travel to and from the Dask scheduler.

The scheduler reads its comms without deserializing user objects (``Serialized`` placeholders), so the
llumnix messages carry dataclasses (InstanceLoad, PolicyConfig) as pickled bytes, which msgpack passes
through untouched. Everything else in the messages is plain msgpack data.
"""

from __future__ import annotations

import pickle
from typing import Any


def pack(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(data: Any) -> Any:
    """Inverse of :func:`pack`; objects that arrived already deserialized pass through."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return pickle.loads(data)
    return data
