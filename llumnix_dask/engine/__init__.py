"""llumnix_dask.engine"""
