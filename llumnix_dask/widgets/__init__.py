"""llumnix_dask.widgets"""
