"""Shared helpers of the simulator benchmarks: run a set of configs over one trace, print, save JSON."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def ratio(a: float, b: float) -> float | None:
    """a / b, None when undefined."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def print_rows(rows: list[dict], columns: list[tuple[str, str, int]]) -> None:
    """Print dict rows as an aligned text table; columns = (key, header, digits)."""
    cells = [[h for _, h, _ in columns]] + [[fmt(r.get(k), d) for k, _, d in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    for j, c in enumerate(cells):
        print("  ".join(x.rjust(w) for x, w in zip(c, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def metrics_row(result) -> dict:
    """The flat numbers of one SimResult that the tables show."""
    o = result.overall
    return {
        "prefill_mean": o["prefill"]["mean"], "prefill_p99": o["prefill"]["p99"],
        "prefill_p999": o["prefill"]["p999"], "prefill_max": o["prefill"]["max"],
        "decode_mean": o["decode"]["mean"], "decode_p99": o["decode"]["p99"],
        "e2e_mean": o["e2e"]["mean"], "e2e_p99": o["e2e"]["p99"],
        "preemption_loss": o["preemption_loss_s"], "preemptions": o["preemptions"],
        "fragmentation_pct": 100 * result.fragmentation, "avg_instances": result.average_instances,
        "migrations": result.migrations["committed"] + result.migrations["queued_moves"],
        "wall_s": result.wall_time_s,
    }


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {**payload, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "load_average": os.getloadavg()}
    path.write_text(json.dumps(payload, indent=2, default=_default))
    print(f"wrote {path}")
    return path


def _default(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)
