"""Serving: the async frontend (dispatch + token streams), the OpenAI-compatible HTTP API, metrics, bench.

* :mod:`~llumnix_dask.serve.frontend` - ``Frontend``: tokenize, dispatch, receive and re-order token streams
* :mod:`~llumnix_dask.serve.app` - ``create_app(cluster, ServeConfig)``: the FastAPI app
* :mod:`~llumnix_dask.serve.server` - ``start_server(cluster, config)``: uvicorn on a real socket
* :mod:`~llumnix_dask.serve.bench` - trace replay over HTTP (``llumnix-dask bench``)
"""
