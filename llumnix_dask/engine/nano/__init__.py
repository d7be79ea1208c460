"""llumnix_dask.engine.nano"""
