"""llumnix_dask.workers"""
