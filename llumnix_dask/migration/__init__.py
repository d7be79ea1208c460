"""llumnix_dask.migration"""
