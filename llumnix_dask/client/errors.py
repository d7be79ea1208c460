"""What can go wrong with a request, as the client side reports it."""

from __future__ import annotations


class NoInstanceError(RuntimeError):
    """The cluster has no engine instance that can take the request."""


class RequestFailed(RuntimeError):
    """An instance reported an error for the request (or died with it)."""


class InstanceLost(RequestFailed):
    """The instance serving the request left the cluster and the request could not continue elsewhere."""


class Overloaded(RuntimeError):
    """The cluster admits no more requests right now; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = float(retry_after_s)
