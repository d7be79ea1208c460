"""Rolling latency statistics and history kept by the global scheduler for the snapshot.

Plain data and arithmetic only (no Dask), so the unit tests and the dashboard read the same numbers.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Iterable

from llumnix_dask.request import Priority
from llumnix_dask.wire.scheduler_api import FinishedRequest


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    data = sorted(v for v in values if v is not None and not math.isnan(v))
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(values: Iterable[float]) -> dict[str, float | int | None]:
    """count / mean / p50 / p99 of a list of seconds (None-valued fields when empty)."""
    data = [v for v in values if v is not None]
    if not data:
        return {"count": 0, "mean": None, "p50": None, "p99": None}
    return {
        "count": len(data),
        "mean": sum(data) / len(data),
        "p50": percentile(data, 50),
        "p99": percentile(data, 99),
    }


class LatencyWindow:
    """The last ``size`` finished requests, summarised per priority on demand."""

    def __init__(self, size: int = 2000) -> None:
        self._items: deque[FinishedRequest] = deque(maxlen=size)
        self.total = 0

    def add(self, item: FinishedRequest) -> None:
        self._items.append(item)
        self.total += 1

    def __len__(self) -> int:
        return len(self._items)

    def finish_rate(self, now: float, window_s: float = 30.0) -> float:
        """Requests finished per second over the last ``window_s`` seconds (by their finish time)."""
        recent = sum(1 for r in reversed(self._items) if now - r.finish_time <= window_s)
        return recent / window_s

    def summary(self, slo_targets: dict[int, float | None] | None = None) -> dict[str, dict]:
        """``{"normal": {"ttft": {...}, "tpot": {...}, "e2e": {...}, "slo_attainment": x}, "high": ..., "all": ...}``.

        SLO attainment = share of requests whose TTFT met their own ``slo`` or, without one, the target of
        their priority in ``slo_targets`` (requests with neither are not counted; None if none counts).
        """
        targets = slo_targets or {}

        def slo(r: FinishedRequest) -> float | None:
            return r.slo_ttft_s if r.slo_ttft_s is not None else targets.get(r.priority)

        groups: dict[str, list[FinishedRequest]] = {"all": list(self._items)}
        for p in Priority:
            groups[p.name.lower()] = [r for r in self._items if r.priority == p]
        out: dict[str, dict] = {}
        for name, items in groups.items():
            with_slo = [(r, slo(r)) for r in items if slo(r) is not None and r.ttft is not None]
            out[name] = {
                "ttft": summarize(r.ttft for r in items),
                "tpot": summarize(r.tpot for r in items),
                "e2e": summarize(r.e2e for r in items),
                "slo_attainment": (
                    sum(1 for r, target in with_slo if r.ttft <= target) / len(with_slo) if with_slo else None
                ),
            }
        return out


class CountHistory:
    """(time, value) samples of the instance count, kept only when the value changes (bounded)."""

    def __init__(self, size: int = 2000) -> None:
        self._items: deque[tuple[float, int]] = deque(maxlen=size)

    def record(self, now: float, value: int) -> None:
        if not self._items or self._items[-1][1] != value:
            self._items.append((now, value))

    def as_list(self) -> list[tuple[float, int]]:
        return list(self._items)
