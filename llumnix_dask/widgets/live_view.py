"""An inline live view for notebooks: ``cluster.live_view()`` shows instances and migrations as they happen.

A small ipywidgets HTML widget redrawn from the scheduler's snapshot by a background thread, so the cell
that displays it returns at once and later cells (which send load) watch it move. It renders in any
Jupyter front end without extra extensions; :func:`render_html` is the same picture for one snapshot::

    >>> view = cluster.live_view()                                       # doctest: +SKIP
    >>> view                                   # displays; refreshes every 0.5 s
    >>> view.stop()                            # or it stops by itself when the cluster closes
"""

from __future__ import annotations

import html
import threading
import time
from typing import Callable

import ipywidgets as widgets

from llumnix_dask.widgets import dashboard_data as dd

DEFAULT_INTERVAL_S = 0.5
MAX_MIGRATION_ROWS = 6
# Consecutive failed snapshots after which the view decides the cluster is gone and stops.
MAX_FAILURES = 3


def _bar(cols: dict, i: int) -> str:
    parts = []
    for key, color in (("used", dd.COLOR_USED), ("virtual", dd.COLOR_VIRTUAL), ("free", dd.COLOR_FREE)):
        share = cols[key][i] / max(1.0, cols["used"][i] + cols["virtual"][i] + cols["free"][i])
        if share > 0:
            parts.append(f"<div style='width:{100 * share:.1f}%;background:{color}'></div>")
    return (
        "<div style='display:flex;width:220px;height:14px;border-radius:3px;overflow:hidden;"
        f"border:1px solid #ced4da'>{''.join(parts)}</div>"
    )


def render_html(snapshot: dict) -> str:
    """One snapshot as HTML: counters, a row per instance (KV bar, queues, freeness) and recent migrations."""
    cols = dd.instance_columns(snapshot)
    policy = snapshot.get("policy") or {}
    counters = snapshot.get("counters") or {}
    low, high = dd.freeness_thresholds(policy)
    td = "style='padding:2px 8px;text-align:left'"
    rows = []
    for i, iid in enumerate(cols["instance_id"]):
        state = cols["state"][i]
        badge = "" if state == "serving" else f" <span style='color:{dd.COLOR_DRAINING}'>({state})</span>"
        rows.append(
            f"<tr><td {td}><code>{html.escape(iid)}</code>{badge}</td><td {td}>{_bar(cols, i)}</td>"
            f"<td {td}>{cols['used_blocks'][i]}/{cols['total_blocks'][i]}</td>"
            f"<td {td}>{cols['running'][i]}</td><td {td}>{cols['waiting'][i]}</td>"
            f"<td {td}><b style='color:{cols['freeness_color'][i]}'>"
            f"{html.escape(cols['freeness_text'][i])}</b></td></tr>"
        )
    head = "".join(f"<th {td}>{h}</th>" for h in ("instance", "KV: used / virtual / free", "blocks", "running",
                                                  "waiting", "freeness"))
    table = f"<table style='border-collapse:collapse;font-size:12px'><tr>{head}</tr>{''.join(rows)}</table>"

    mig_rows = []
    for m in list(snapshot.get("migrations") or [])[-MAX_MIGRATION_ROWS:][::-1]:
        when = time.strftime("%H:%M:%S", time.localtime(float(m.get("time") or 0)))
        ok = bool(m.get("ok"))
        color = dd.COLOR_OK if ok else dd.COLOR_FAILED
        downtime_ms = float(m.get("downtime_s") or 0) * 1000
        total_ms = float(m.get("total_s") or 0) * 1000
        detail = (
            f"downtime {downtime_ms:.1f} ms, total {total_ms:.0f} ms"
            if ok
            else html.escape(str(m.get("reason", ""))[:80])
        )
        mig_rows.append(
            f"<li><span style='color:#6c757d'>{when}</span> <code>{html.escape(str(m.get('request_id')))}</code> "
            f"{html.escape(str(m.get('src')))} &rarr; {html.escape(str(m.get('dst')))} "
            f"<span style='color:{color}'>{'ok' if ok else 'failed'}</span> &middot; {detail}</li>"
        )
    migrations = (
        f"<ul style='margin:2px 0;padding-left:18px;font-size:12px'>{''.join(mig_rows)}</ul>"
        if mig_rows
        else "<div style='font-size:12px;color:#6c757d'>no migration yet</div>"
    )
    latency = snapshot.get("latency") or {}
    lat_parts = []
    for cls in dd.PRIORITY_CLASSES:
        ttft = (latency.get(cls) or {}).get("ttft") or {}
        if ttft.get("count"):
            lat_parts.append(f"{cls}: TTFT P50 {ttft['p50'] * 1000:.0f} ms / P99 {ttft['p99'] * 1000:.0f} ms "
                             f"({ttft['count']} requests)")
    summary = (
        f"<b>Llumnix</b> &middot; dispatch <b>{html.escape(str(policy.get('dispatch')))}</b> &middot; migration "
        f"<b>{'on' if policy.get('migration_enabled') else 'off'}</b> (out &lt; {low:g} &lt; in {high:g}) &middot; "
        f"dispatched {counters.get('dispatched', 0)} &middot; finished {counters.get('finished', 0)} &middot; "
        f"migrations {counters.get('migrations', 0)} ok / {counters.get('migrations_failed', 0)} failed"
    )
    return (
        f"<div style='font-family:sans-serif'><div style='font-size:13px;margin-bottom:4px'>{summary}</div>"
        f"{table}<div style='font-size:12px;margin-top:4px'>{' &middot; '.join(lat_parts)}</div>"
        f"<div style='font-size:12px;margin-top:6px'><b>Recent migrations</b></div>{migrations}</div>"
    )


class LiveView(widgets.VBox):
    """A self-refreshing HTML view of a cluster (``get_snapshot`` returns the scheduler's snapshot dict)."""

    def __init__(self, get_snapshot: Callable[[], dict], interval_s: float = DEFAULT_INTERVAL_S,
                 max_duration_s: float | None = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s: must be > 0, got {interval_s!r}")
        self._get_snapshot = get_snapshot
        self.interval_s = float(interval_s)
        self.max_duration_s = max_duration_s
        self.html = widgets.HTML()
        self.updates = 0
        self._stop = threading.Event()
        super().__init__([self.html])
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="llumnix-live-view", daemon=True)
        self._thread.start()

    def refresh(self) -> bool:
        """Redraw from a fresh snapshot now; False if the snapshot failed."""
        try:
            snapshot = self._get_snapshot()
        except Exception as exc:
            self.html.value = f"<div style='color:#6c757d'>live view: no data ({html.escape(str(exc))[:120]})</div>"
            return False
        self.html.value = render_html(snapshot)
        self.updates += 1
        return True

    def _run(self) -> None:
        started = time.monotonic()
        failures = 0
        while not self._stop.wait(self.interval_s):
            if self.max_duration_s is not None and time.monotonic() - started > self.max_duration_s:
                break
            failures = 0 if self.refresh() else failures + 1
            if failures >= MAX_FAILURES:
                break

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop refreshing (the last picture stays)."""
        self._stop.set()
        self._thread.join(timeout=5)
