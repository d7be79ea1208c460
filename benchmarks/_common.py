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
        "mem_util_mean": result.memory.get("util_mean"), "mem_util_p99": result.memory.get("util_p99"),
        "queued_share": result.memory.get("share_with_queue"),
        "wall_s": result.wall_time_s,
    }


def seed_list(base: int, count: int) -> list[int]:
    """The seeds of a multi-seed run: base, base+1, ..., base+count-1."""
    if count < 1:
        raise ValueError(f"--seeds: must be >= 1, got {count}")
    return list(range(base, base + count))


def mean_over_seeds(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Average the numeric fields of rows that agree on ``keys`` (one row per seed), in first-seen order.

    Each averaged row gets ``seeds`` (how many were averaged) and, for every numeric field f,
    ``f + "_seeds"`` with the per-seed values (so the spread stays visible in the JSON)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for group in groups.values():
        avg = dict(group[0])
        for f, v in group[0].items():
            if f in keys or f == "seed" or isinstance(v, bool) or not isinstance(v, (int, float)) or v is None:
                continue
            vals = [g.get(f) for g in group]
            finite = [x for x in vals if isinstance(x, (int, float)) and not math.isnan(x)]
            avg[f] = sum(finite) / len(finite) if finite else None
            avg[f + "_seeds"] = vals
        avg["seeds"] = len(group)
        out.append(avg)
    return out


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
