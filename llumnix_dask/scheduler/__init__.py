"""llumnix_dask.scheduler"""
