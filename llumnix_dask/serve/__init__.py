"""llumnix_dask.serve"""
