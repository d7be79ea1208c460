"""Serving over HTTP: the OpenAI-compatible API, its metrics, and trace replay (the client side that turns
prompts into requests is :mod:`llumnix_dask.client`).

* :mod:`~llumnix_dask.serve.app` - ``create_app(cluster, ServeConfig)``: the FastAPI app
* :mod:`~llumnix_dask.serve.server` - ``start_server(cluster, config)``: uvicorn on a real socket
* :mod:`~llumnix_dask.serve.openai_schema` - OpenAI request bodies and error responses
* :mod:`~llumnix_dask.serve.metrics` - Prometheus metrics of the server
* :mod:`~llumnix_dask.serve.commands` - what ``llumnix-dask up``, ``status`` and ``bench`` do
* :mod:`~llumnix_dask.serve.bench` - trace replay over HTTP (``llumnix-dask bench``)
"""
