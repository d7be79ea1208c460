"""Discrete-event simulator: N sim engines driven by the same policies as the real cluster."""

from llumnix_dask.sim.metrics import SimResult, aggregate, plot_latency_cdfs
from llumnix_dask.sim.simulator import Simulator, simulate

__all__ = ["SimResult", "Simulator", "aggregate", "plot_latency_cdfs", "simulate"]
