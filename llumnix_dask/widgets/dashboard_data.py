"""From a scheduler snapshot to the columns the dashboard and the live view draw (pure, no Bokeh).

Every function takes the plain dict of :meth:`llumnix_dask.scheduler.core.GlobalScheduler.snapshot` and
returns plain lists, so the Bokeh page, the inline notebook view and the unit tests read the same numbers::

    >>> snap = {"time": 100.0, "policy": {"migrate_out_freeness": 10.0, "migrate_in_freeness": 60.0},
    ...         "instances": [{"instance_id": "instance-1", "used_blocks": 30, "total_blocks": 100,
    ...                        "virtual_usage": 50.0, "freeness": 25.0, "num_running": 2, "num_waiting": 1}]}
    >>> cols = instance_columns(snap)
    >>> cols["instance_id"], cols["used"], cols["virtual"], cols["free"]
    (['instance-1'], [0.3], [0.2], [0.5])
"""

from __future__ import annotations

import math
import re
from collections import deque
from typing import Any

# Freeness of an idle instance is its whole KV cache (thousands of blocks); the chart would squash the
# migration thresholds to nothing, so bars are clipped at a few times the migrate-in threshold.
FREENESS_AXIS_THRESHOLD_MULTIPLE = 3.0
# Virtual usage above the cache (priority headroom, queued demand) is drawn up to this share of it.
MAX_VIRTUAL_SHARE = 2.0
LATENCY_HISTORY_POINTS = 1200  # 10 minutes at 2 Hz
LATENCY_SAMPLE_MIN_INTERVAL_S = 0.4
PRIORITY_CLASSES = ("normal", "high")

# Colors shared by the Bokeh page and the inline view.
COLOR_USED = "#1f77b4"
COLOR_VIRTUAL = "#ff9f1c"
COLOR_FREE = "#e5e8ec"
COLOR_RUNNING = "#2a9d8f"
COLOR_WAITING = "#e76f51"
COLOR_LOW = "#d62828"
COLOR_MID = "#8d99ae"
COLOR_HIGH = "#2a9d8f"
COLOR_DRAINING = "#6c757d"
COLOR_OK = "#2a9d8f"
COLOR_FAILED = "#d62828"


def natural_key(text: Any) -> tuple:
    """Sort "instance-2" before "instance-10"."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(text)))


def _finite(value: Any, default: float = 0.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def sorted_instances(snapshot: dict) -> list[dict]:
    return sorted(snapshot.get("instances") or [], key=lambda r: natural_key(r.get("instance_id")))


def instance_columns(snapshot: dict) -> dict[str, list]:
    """One entry per instance: KV shares (used, extra virtual, free), queues and freeness with display values.

    ``used + virtual + free`` is 1 unless virtual usage exceeds the cache (then up to ``MAX_VIRTUAL_SHARE``).
    ``freeness_bar`` is freeness clipped to :func:`freeness_axis`; ``freeness_text`` is the true value.
    """
    policy = snapshot.get("policy") or {}
    low, high = freeness_thresholds(policy)
    axis_lo, axis_hi = freeness_axis(snapshot)
    cols: dict[str, list] = {
        k: []
        for k in (
            "instance_id", "used", "virtual", "free", "used_blocks", "total_blocks", "virtual_blocks",
            "kv_pct", "running", "waiting", "high_priority", "preemptions", "freeness_bar", "freeness_text",
            "freeness_color", "freeness_text_align", "freeness_text_offset", "state", "device", "dispatched",
        )
    }
    for row in sorted_instances(snapshot):
        total = max(1, int(row.get("total_blocks") or 0))
        used_blocks = int(row.get("used_blocks") or 0)
        virtual = row.get("virtual_usage")
        terminating = bool(row.get("terminating"))
        virtual_f = float(virtual) if virtual is not None else float(used_blocks)
        used = min(1.0, used_blocks / total)
        if terminating or not math.isfinite(virtual_f):
            extra = 0.0
        else:
            extra = max(0.0, min(virtual_f, MAX_VIRTUAL_SHARE * total) / total - used)
        free = max(0.0, 1.0 - used - extra)
        f = row.get("freeness")
        f = float(f) if f is not None else math.nan
        if terminating or f == -math.inf:
            bar, text, color = axis_lo, "draining", COLOR_DRAINING
        else:
            bar = min(max(_finite(f), axis_lo), axis_hi)
            text = f"{f:.0f}" if math.isfinite(f) else str(f)
            color = COLOR_LOW if f < low else COLOR_HIGH if f > high else COLOR_MID
        state = "draining" if terminating else "migrating" if row.get("migrating") else "serving"
        cols["instance_id"].append(str(row.get("instance_id")))
        cols["used"].append(round(used, 4))
        cols["virtual"].append(round(extra, 4))
        cols["free"].append(round(free, 4))
        cols["used_blocks"].append(used_blocks)
        cols["total_blocks"].append(total)
        cols["virtual_blocks"].append("inf" if not math.isfinite(virtual_f) else f"{virtual_f:.0f}")
        cols["kv_pct"].append(f"{100 * used_blocks / total:.0f}%")
        cols["running"].append(int(row.get("num_running") or 0))
        cols["waiting"].append(int(row.get("num_waiting") or 0))
        cols["high_priority"].append(int(row.get("num_high_priority") or 0))
        cols["preemptions"].append(int(row.get("num_preemptions") or 0))
        cols["freeness_bar"].append(bar)
        cols["freeness_text"].append(text)
        cols["freeness_color"].append(color)
        # The value sits just outside the bar's end: right of positive bars, left of negative ones.
        cols["freeness_text_align"].append("left" if bar >= 0 else "right")
        cols["freeness_text_offset"].append(4 if bar >= 0 else -4)
        cols["state"].append(state)
        cols["device"].append(str(row.get("device", "")))
        cols["dispatched"].append(int(row.get("dispatched") or 0))
    return cols


def freeness_thresholds(policy: dict) -> tuple[float, float]:
    return float(policy.get("migrate_out_freeness", 10.0)), float(policy.get("migrate_in_freeness", 60.0))


def freeness_axis(snapshot: dict) -> tuple[float, float]:
    """The visible freeness range: always shows both thresholds, clips idle instances' huge values."""
    low, high = freeness_thresholds(snapshot.get("policy") or {})
    values = [float(r["freeness"]) for r in snapshot.get("instances") or [] if r.get("freeness") is not None]
    finite = [v for v in values if math.isfinite(v)]
    span = max(abs(high), abs(low), 1.0)
    top = max(high * 1.5, low + span * 0.5)
    if finite:
        top = max(top, min(max(finite), FREENESS_AXIS_THRESHOLD_MULTIPLE * span))
    bottom = min(0.0, low)
    if finite:
        bottom = min(bottom, max(min(finite), -FREENESS_AXIS_THRESHOLD_MULTIPLE * span))
    pad = 0.05 * (top - bottom)
    return bottom - (pad if bottom < 0 else 0.0), top + pad


def migration_columns(snapshot: dict) -> dict[str, list]:
    """One segment per logged migration: from (start, src) to (end, dst), times in epoch milliseconds."""
    cols: dict[str, list] = {
        k: []
        for k in (
            "start", "end", "src", "dst", "request_id", "outcome", "downtime_ms", "total_ms", "blocks",
            "stages", "transport", "color", "reason",
        )
    }
    for m in snapshot.get("migrations") or []:
        end = _finite(m.get("time"))
        total = _finite(m.get("total_s"))

        ok = bool(m.get("ok"))
        cols["start"].append((end - total) * 1000.0)
        cols["end"].append(end * 1000.0)
        cols["src"].append(str(m.get("src")))
        cols["dst"].append(str(m.get("dst")))
        cols["request_id"].append(str(m.get("request_id")))
        cols["outcome"].append(str(m.get("outcome") or ("committed" if ok else "failed")))
        cols["downtime_ms"].append(round(_finite(m.get("downtime_s")) * 1000.0, 2))
        cols["total_ms"].append(round(total * 1000.0, 2))
        cols["blocks"].append(int(m.get("blocks") or 0))
        cols["stages"].append(int(m.get("num_stages") or 0))
        cols["transport"].append(str(m.get("transport") or "-"))
        cols["color"].append(COLOR_OK if ok else COLOR_FAILED)
        cols["reason"].append(str(m.get("reason", ""))[:160])
    return cols


def timeline_factors(snapshot: dict) -> list[str]:
    """Instance ids for the migration timeline's y axis: current instances plus any seen in the log."""
    ids = {str(r.get("instance_id")) for r in snapshot.get("instances") or []}
    for m in snapshot.get("migrations") or []:
        ids.update((str(m.get("src")), str(m.get("dst"))))
    return sorted(ids, key=natural_key)


def instance_count_columns(snapshot: dict) -> dict[str, list]:
    """The instance count as a step line that reaches ``snapshot["time"]`` (epoch milliseconds)."""
    history = list(snapshot.get("instance_count") or [])
    times = [float(t) * 1000.0 for t, _ in history]
    counts = [int(c) for _, c in history]
    now = snapshot.get("time")
    if counts and now is not None:
        times.append(float(now) * 1000.0)
        counts.append(counts[-1])
    return {"time": times, "count": counts}


def latency_row(snapshot: dict) -> dict[str, float]:
    """One sample of rolling TTFT/TPOT P50/P99 per priority class, in milliseconds (NaN = no data)."""
    latency = snapshot.get("latency") or {}
    row: dict[str, float] = {"time": _finite(snapshot.get("time")) * 1000.0}
    for metric in ("ttft", "tpot"):
        for cls in PRIORITY_CLASSES:
            stats = (latency.get(cls) or {}).get(metric) or {}
            for q in ("p50", "p99"):
                v = stats.get(q)
                row[f"{metric}_{q}_{cls}"] = float(v) * 1000.0 if v is not None else math.nan
    return row


LATENCY_COLUMNS = tuple(latency_row({"time": 0.0}).keys())


class LatencyHistory:
    """A bounded history of :func:`latency_row` samples, shared by every open dashboard page.

    Rows are numbered, so a page asks only for the rows it has not seen (``since``).
    """

    def __init__(self, maxlen: int = LATENCY_HISTORY_POINTS) -> None:
        self._rows: deque[tuple[int, dict]] = deque(maxlen=maxlen)
        self._next = 0

    def sample(self, snapshot: dict, min_interval_s: float = LATENCY_SAMPLE_MIN_INTERVAL_S) -> None:
        row = latency_row(snapshot)
        if self._rows and row["time"] - self._rows[-1][1]["time"] < min_interval_s * 1000.0:
            return
        self._rows.append((self._next, row))
        self._next += 1

    def since(self, seq: int) -> tuple[dict[str, list], int]:
        """Columns of the rows numbered >= ``seq`` and the number to ask for next time."""
        rows = [r for n, r in self._rows if n >= seq]
        return {k: [r[k] for r in rows] for k in LATENCY_COLUMNS}, self._next


def slo_lines(policy: dict) -> dict[str, float | None]:
    """The TTFT SLO targets in milliseconds per priority class (None = no target)."""
    out: dict[str, float | None] = {}
    for cls, key in (("normal", "ttft_slo_s"), ("high", "ttft_slo_high_s")):
        v = policy.get(key)
        out[cls] = float(v) * 1000.0 if v is not None else None
    return out
