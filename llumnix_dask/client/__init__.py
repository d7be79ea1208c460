"""The client side of a cluster: what turns a prompt into a running request and its tokens into a stream,
used by :class:`~llumnix_dask.Cluster` and by the HTTP server alike.

* ``frontend``    ``Frontend``: intake, dispatch, hand-off to an instance, token reception, aborts
* ``intake``      what a prompt must be before it is dispatched (valid text, fits the context)
* ``token_order`` one request's token messages in order, each token once, whatever instance sent them
* ``health``      stalled, gapped or orphaned requests: replay a missing token, continue a dead instance's work
* ``records``     a request's handle in flight, its chunks and its completion
* ``errors``      what can go wrong, as the caller sees it
* ``dispatch``    adaptive batching of dispatch calls to the global scheduler
* ``scaling``     the cluster-manager side of scaling (start workers, retire drained ones, keep the size)
"""
