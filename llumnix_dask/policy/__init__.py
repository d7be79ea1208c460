"""Pure scheduling policies: no Dask, no torch, no I/O. Inputs are InstanceLoad snapshots."""
