"""llumnix_dask.sim"""
