"""Live views and knobs: the Llumnix page of the Dask dashboard, an ipywidgets control panel, an inline view.

- :mod:`llumnix_dask.widgets.dashboard`: the ``/llumnix`` Bokeh page (registered by ``Cluster`` and by the
  ``llumnix_dask.preload.scheduler`` preload).
- :mod:`llumnix_dask.widgets.panel`: ``cluster.panel()``, live policy knobs.
- :mod:`llumnix_dask.widgets.live_view`: ``cluster.live_view()``, instances and migrations inline.

Importing this package is cheap; Bokeh and ipywidgets load when a page or widget is built.
"""
