"""Shared machinery of the simulator sweeps (paper_sim, priority_sim, scaling_sim): run many
(configuration, trace) pairs with a progress bar, average over seeds keeping the spread, plot a grid of
curves in the paper's layout, and tee what is printed into a text file next to the JSON."""

from __future__ import annotations

import io
import math
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Callable, Iterable

import _common
from _common import metrics_row

# Columns of the paper's serving figures (Figs. 11 and 14): (row key, title).
LATENCY_PANELS = [
    ("e2e_p99", "Request P99"), ("e2e_mean", "Request Mean"), ("prefill_p99", "Prefill P99"),
    ("prefill_mean", "Prefill Mean"), ("decode_p99", "Decode P99"), ("decode_mean", "Decode Mean"),
    ("preemption_loss", "Preemption Loss"),
]
COLORS = {"llumnix": "tab:orange", "infaas": "tab:blue", "round_robin": "tab:green", "llumnix-base": "tab:blue"}
MARKERS = {"llumnix": "s", "infaas": "o", "round_robin": "^", "llumnix-base": "o"}


def results_dir() -> Path:
    """Where the JSON, PNG and text outputs go (``_common.RESULTS``: benchmarks/results, or a test's tmp dir)."""
    _common.RESULTS.mkdir(parents=True, exist_ok=True)
    return _common.RESULTS


def run_all(jobs: list[tuple[dict, Callable[[], object]]], progress: bool = True,
            extra: Callable[[object], dict] | None = None) -> list[dict]:
    """Run every job (its labels, a thunk returning a SimResult); one row of labels + metrics (+ ``extra``
    of the result) each. Results are not kept: 10k-request runs are megabytes each."""
    from tqdm.auto import tqdm

    rows = []
    bar = tqdm(total=len(jobs), desc="simulations", unit="run", disable=not progress, file=sys.stderr)
    for labels, thunk in jobs:
        result = thunk()
        rows.append({**labels, **metrics_row(result), **(extra(result) if extra else {})})
        bar.set_postfix_str(" ".join(f"{v}" for v in labels.values()), refresh=False)
        bar.update(1)
    bar.close()
    return rows


def spread(rows: list[dict], keys: tuple[str, ...], fields: Iterable[str]) -> list[dict]:
    """One row per group of ``keys``: mean, min, max and std over the group (seeds) of each field."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, group in groups.items():
        row = dict(zip(keys, key))
        row["seeds"] = len(group)
        for f in fields:
            vals = [g[f] for g in group if g.get(f) is not None and not _nan(g[f])]
            if not vals:
                row[f] = row[f + "_min"] = row[f + "_max"] = row[f + "_std"] = None
                continue
            mean = sum(vals) / len(vals)
            row[f], row[f + "_min"], row[f + "_max"] = mean, min(vals), max(vals)
            row[f + "_std"] = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
            row[f + "_seeds"] = [g.get(f) for g in group]
        out.append(row)
    return out


def _nan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def plot_grid(rows: list[dict], row_key: str, row_values: list, x_key: str, panels: list[tuple[str, str]],
              series_key: str, path: Path, references: dict | None = None, x_label: str = "Request Rate",
              log_panels: tuple[str, ...] = ()) -> Path:
    """A grid in the paper's layout: one row of panels per ``row_values`` entry, one panel per metric, one
    line per ``series_key`` value (mean over seeds, the band is min-max over seeds). ``references``:
    {row value: {label: {"x": [...], metric: [...]}}} drawn dashed in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nrow, ncol = len(row_values), len(panels)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.1 * nrow), squeeze=False)
    for i, rv in enumerate(row_values):
        sub = [r for r in rows if r[row_key] == rv]
        for j, (metric, title) in enumerate(panels):
            ax = axes[i][j]
            for name in dict.fromkeys(r[series_key] for r in sub):
                pts = sorted((r[x_key], r[metric], r.get(metric + "_min"), r.get(metric + "_max"))
                             for r in sub if r[series_key] == name and r.get(metric) is not None)
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                ax.plot(xs, [p[1] for p in pts], marker=MARKERS.get(name, "."), ms=3, lw=1.2,
                        color=COLORS.get(name), label=name)
                if all(p[2] is not None for p in pts):
                    ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], color=COLORS.get(name), alpha=0.2)
            for label, ref in ((references or {}).get(rv) or {}).items():
                if metric in ref:
                    ax.plot(ref["x"], ref[metric], ls="--", lw=1, color="grey" if "INFaaS" in label else "black",
                            alpha=0.7, label=label)
            if metric in log_panels:
                ax.set_yscale("log")
            if i == 0:
                ax.set_title(title, fontsize=9)
            if j == 0:
                ax.set_ylabel(str(rv), fontsize=9)
            if i == nrow - 1:
                ax.set_xlabel(x_label, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


class Tee:
    """Print and keep what was printed (``with Tee() as t: ...; t.save(name)`` -> results/<name>.txt)."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def __enter__(self) -> "Tee":
        self._stdout = sys.stdout
        sys.stdout = self
        return self

    def write(self, text: str) -> int:
        self._stdout.write(text)
        return self.buffer.write(text)

    def flush(self) -> None:
        self._stdout.flush()

    def __exit__(self, *exc) -> None:
        sys.stdout = self._stdout

    def save(self, name: str) -> Path:
        path = results_dir() / f"{name}.txt"
        path.write_text(self.buffer.getvalue())
        return path


__all__ = ["LATENCY_PANELS", "Tee", "plot_grid", "redirect_stdout", "results_dir", "run_all", "spread"]
