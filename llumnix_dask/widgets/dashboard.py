"""The Llumnix page of the Dask dashboard (``/llumnix``, and ``/individual-llumnix`` for dask-labextension).

The page runs inside the Dask scheduler process and reads the global scheduler plugin's state directly
(:meth:`~llumnix_dask.scheduler.core.GlobalScheduler.snapshot`, a few milliseconds), refreshing at
``UPDATE_INTERVAL_MS`` with bounded data: per-instance KV usage (used / virtual / free), queue lengths,
freeness with the migration thresholds, a migration timeline (src -> dst, downtime in the tooltip), rolling
TTFT/TPOT P50/P99 per priority class with the SLO targets, and the instance count over time.

Pages must be known before the scheduler starts its HTTP server, so :func:`register_page` runs when
``llumnix_dask.scheduler`` is imported as a scheduler preload and when :class:`llumnix_dask.Cluster` starts
its embedded ``LocalCluster``::

    >>> from llumnix_dask.widgets.dashboard import register_page
    >>> register_page()                                                  # doctest: +SKIP
    >>> # LocalCluster(...) now serves http://<scheduler>:8787/llumnix

This module imports Bokeh only when a page is built or registered: importing it is cheap.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Callable

logger = logging.getLogger(__name__)

PAGE = "llumnix"
ROUTE = "/" + PAGE
INDIVIDUAL_ROUTE = "/individual-" + PAGE
UPDATE_INTERVAL_MS = 400  # 2.5 Hz; a snapshot costs a few ms on the scheduler's event loop
TIME_WINDOW_S = 120.0  # the time axes show the last two minutes
MIN_TIME_WINDOW_S = 20.0

_histories: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


# -- registration --------------------------------------------------------------------------------------
def register_page() -> bool:
    """Add the Llumnix page to the Dask dashboard of schedulers started from now on (idempotent).

    Returns False when the dashboard cannot be used (Bokeh missing or incompatible).
    """
    try:
        import distributed.dashboard.scheduler as dash
    except Exception as exc:  # bokeh missing / too old: Dask runs without a dashboard anyway
        logger.debug("Dask dashboard unavailable, Llumnix page not registered: %s", exc)
        return False
    dash.applications[ROUTE] = llumnix_doc
    dash.applications[INDIVIDUAL_ROUTE] = individual_llumnix_doc
    if not getattr(dash.template_variables, "_llumnix_page", False):
        original = dash.template_variables

        def template_variables(scheduler: Any) -> dict:
            variables = original(scheduler)  # memoized per scheduler: the same dict every call
            if PAGE not in variables["pages"]:
                pos = variables["pages"].index("info") if "info" in variables["pages"] else len(variables["pages"])
                variables["pages"].insert(pos, PAGE)
            return variables

        template_variables._llumnix_page = True  # type: ignore[attr-defined]
        dash.template_variables = template_variables
    return True


# -- the page ------------------------------------------------------------------------------------------
def scheduler_snapshot(scheduler: Any) -> dict | None:
    """The global scheduler's snapshot plus the shared latency history; None when the plugin is not installed."""
    from llumnix_dask.scheduler.plugin import snapshot_of
    from llumnix_dask.widgets.dashboard_data import LatencyHistory

    snapshot = snapshot_of(scheduler, n_migrations=50, n_decisions=6)
    if snapshot is None:
        return None
    history = _histories.get(scheduler)
    if history is None:
        history = _histories[scheduler] = LatencyHistory()
    history.sample(snapshot)
    snapshot["_latency_history"] = history
    return snapshot


def llumnix_doc(scheduler: Any, extra: dict, doc: Any) -> None:
    """Bokeh document function of the ``/llumnix`` page (with the Dask navigation bar)."""
    from distributed.dashboard.components.scheduler import env

    individual_llumnix_doc(scheduler, extra, doc)
    doc.template = env.get_template("simple.html")
    doc.template_variables.update(extra)


def individual_llumnix_doc(scheduler: Any, extra: dict, doc: Any) -> None:
    """The page without the navigation bar, for dask-labextension panes."""
    from distributed.dashboard.components import add_periodic_callback
    from distributed.dashboard.components.scheduler import BOKEH_THEME

    page = LlumnixDashboard(lambda: scheduler_snapshot(scheduler))
    page.update()
    add_periodic_callback(doc, page, UPDATE_INTERVAL_MS)
    doc.add_root(page.root)
    doc.title = "Dask: Llumnix"
    doc.theme = BOKEH_THEME


class LlumnixDashboard:
    """The figures and data sources of the page; :meth:`update` pulls one snapshot and refreshes them."""

    def __init__(self, get_snapshot: Callable[[], dict | None]) -> None:
        from llumnix_dask.widgets.dashboard_figures import build_figures

        self._get_snapshot = get_snapshot
        self._latency_seq = 0
        self._last: dict[str, Any] = {}
        self.figures = build_figures()
        self.root = self.figures.root
        self.sources = self.figures.sources

    def _set(self, name: str, data: dict) -> None:
        # Unchanged data is not re-sent to the browser.
        if self._last.get(name) != data:
            self._last[name] = data
            self.sources[name].data = data

    def update(self) -> None:
        from llumnix_dask.widgets import dashboard_data as dd

        snapshot = self._get_snapshot()
        f = self.figures
        if snapshot is None:
            f.header.text = (
                "<h3 style='margin:4px 0'>Llumnix</h3><p>The Llumnix global scheduler plugin is not installed on "
                "this scheduler. Start it with <code>--preload llumnix_dask.preload.scheduler</code> or connect a "
                "<code>llumnix_dask.Cluster</code>.</p>"
            )
            return
        policy = snapshot.get("policy") or {}
        cols = dd.instance_columns(snapshot)
        ids = cols["instance_id"]
        if list(f.instance_range.factors) != ids[::-1]:
            f.instance_range.factors = ids[::-1]  # first instance on top
        self._set("instances", cols)

        low, high = dd.freeness_thresholds(policy)
        f.migrate_out_span.location, f.migrate_in_span.location = low, high
        # In the title rather than as labels by the lines: a label near the axis end would be cut off.
        f.freeness_figure.title.text = f"Freeness (blocks per request): migrate out < {low:g}, in > {high:g}"
        lo, hi = dd.freeness_axis(snapshot)
        f.freeness_range.start, f.freeness_range.end = lo, hi
        widest = max((u + v + fr for u, v, fr in zip(cols["used"], cols["virtual"], cols["free"])), default=1.0)
        f.kv_range.end = max(1.0, widest)
        f.queue_range.end = max(4, max((r + w for r, w in zip(cols["running"], cols["waiting"])), default=0) * 1.15)

        now_ms = float(snapshot["time"]) * 1000.0
        # The last TIME_WINDOW_S seconds, or since the first instance joined if that is more recent.
        history = snapshot.get("instance_count") or []
        since = float(history[0][0]) * 1000.0 - 2000.0 if history else now_ms
        start = max(now_ms - TIME_WINDOW_S * 1000.0, min(since, now_ms - MIN_TIME_WINDOW_S * 1000.0))
        f.time_range.start, f.time_range.end = start, now_ms + 1000.0
        factors = dd.timeline_factors(snapshot)
        if list(f.timeline_range.factors) != factors[::-1]:
            f.timeline_range.factors = factors[::-1]
        migrations = dd.migration_columns(snapshot)
        self._set("migrations", migrations)
        self._set("instance_count", dd.instance_count_columns(snapshot))
        target = snapshot.get("target_instances")
        f.target_span.location = target
        f.target_span.visible = target is not None
        counts = self._last["instance_count"]["count"]
        f.count_range.end = max([4, *(c + 1 for c in counts), (target or 0) + 1])

        latency_history = snapshot.get("_latency_history")
        if latency_history is not None:
            new, self._latency_seq = latency_history.since(self._latency_seq)
            if new["time"]:
                self.sources["latency"].stream(new, rollover=dd.LATENCY_HISTORY_POINTS)
        for cls, value in dd.slo_lines(policy).items():
            span = f.slo_spans[cls]
            span.visible = value is not None
            span.location = value

        f.header.text = _header_html(snapshot)
        f.decisions.text = _decisions_html(snapshot)


def _header_html(snapshot: dict) -> str:
    p = snapshot.get("policy") or {}
    c = snapshot.get("counters") or {}
    n = len(snapshot.get("instances") or [])
    lat = (snapshot.get("latency") or {}).get("all") or {}
    ttft = (lat.get("ttft") or {}).get("p99")
    slo = lat.get("slo_attainment")
    migration = "on" if p.get("migration_enabled") and p.get("dispatch") == "llumnix" else "off"
    scaling = (
        f"[{p.get('scale_up_freeness', 0):g}, {p.get('scale_down_freeness', 0):g}], "
        f"{p.get('min_instances')}-{p.get('max_instances')} instances"
        if p.get("scaling_enabled")
        else "off"
    )

    def chip(label: str, value: Any) -> str:
        return (
            "<span style='display:inline-block;margin:2px 10px 2px 0;padding:2px 8px;border-radius:10px;"
            f"background:#eef1f5'><span style='color:#6c757d'>{label}</span> <b>{value}</b></span>"
        )

    chips = [
        chip("instances", n),
        chip("dispatch", p.get("dispatch")),
        chip("migration", migration),
        chip("headroom", f"{p.get('priority_headroom_blocks')} blocks" if p.get("priorities_enabled") else "off"),
        chip("scaling", scaling),
        chip("dispatched", c.get("dispatched", 0)),
        chip("finished", c.get("finished", 0)),
        chip("migrations", f"{c.get('migrations', 0)} ok / {c.get('migrations_failed', 0)} failed"),
        chip("TTFT P99", f"{ttft * 1000:.0f} ms" if ttft is not None else "-"),
        chip("SLO met", f"{slo * 100:.0f}%" if slo is not None else "-"),
    ]
    title = "<b style='font-size:16px;margin-right:12px'>Llumnix</b>"
    return "<div style='font-size:13px'>" + title + "".join(chips) + "</div>"


def _decisions_html(snapshot: dict) -> str:
    import html
    import time

    rows = []
    for d in reversed(snapshot.get("decisions") or []):
        reason = d.get("reason")
        if isinstance(reason, dict):
            reason = ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in reason.items())
        when = time.strftime("%H:%M:%S", time.localtime(float(d.get("time") or 0)))
        who = " -> ".join(str(x) for x in (d.get("instance_id"), d.get("target_id")) if x)
        rows.append(
            f"<tr><td style='color:#6c757d;padding-right:8px'>{when}</td><td style='padding-right:8px'><b>"
            f"{html.escape(str(d.get('kind')))}</b></td><td style='padding-right:8px'>{html.escape(who)}</td>"
            f"<td style='color:#495057'>{html.escape(str(reason))[:140]}</td></tr>"
        )
    body = "".join(rows) or "<tr><td>no decisions yet</td></tr>"
    return f"<div style='font-size:12px'><b>Recent decisions</b><table>{body}</table></div>"
