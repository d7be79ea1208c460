"""The Bokeh figures of the Llumnix dashboard page: built once per page, fed by ``LlumnixDashboard.update``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    DatetimeTickFormatter,
    Div,
    FactorRange,
    HoverTool,
    Range1d,
    Span,
)
from bokeh.plotting import figure

from llumnix_dask.widgets import dashboard_data as dd

BAR_HEIGHT = 250
TIME_HEIGHT = 220
PRIORITY_COLORS = {"normal": "#1f77b4", "high": "#d62728"}


@dataclass
class DashboardFigures:
    root: Any
    sources: dict[str, ColumnDataSource]
    header: Div
    decisions: Div
    instance_range: FactorRange
    timeline_range: FactorRange
    kv_range: Range1d
    queue_range: Range1d
    freeness_range: Range1d
    time_range: Range1d
    count_range: Range1d
    migrate_out_span: Span
    migrate_in_span: Span
    freeness_figure: Any
    target_span: Span
    slo_spans: dict[str, Span]


def _style(p: Any) -> Any:
    p.toolbar.logo = None
    p.title.text_font_size = "13px"
    p.title.text_font_style = "bold"
    p.outline_line_color = None
    p.min_border_left = 10
    p.xgrid.grid_line_alpha = 0.35
    p.ygrid.grid_line_color = None
    if p.legend:
        p.legend.label_text_font_size = "11px"
        p.legend.background_fill_alpha = 0.7
        p.legend.spacing = 12
        p.legend.padding = 4
    return p


def _time_axis(p: Any) -> None:
    p.xaxis.formatter = DatetimeTickFormatter(seconds="%H:%M:%S", minsec="%H:%M:%S", minutes="%H:%M")


def build_figures() -> DashboardFigures:
    empty_instances = {k: [] for k in dd.instance_columns({"instances": []})}
    sources = {
        "instances": ColumnDataSource(empty_instances, name="llumnix_instances"),
        "migrations": ColumnDataSource({k: [] for k in dd.migration_columns({})}, name="llumnix_migrations"),
        "instance_count": ColumnDataSource({"time": [], "count": []}, name="llumnix_instance_count"),
        "latency": ColumnDataSource({k: [] for k in dd.LATENCY_COLUMNS}, name="llumnix_latency"),
    }
    inst = sources["instances"]
    instance_range = FactorRange()
    instance_tooltips = [
        ("instance", "@instance_id (@state)"),
        ("KV blocks used", "@used_blocks / @total_blocks (@kv_pct)"),
        ("virtual usage", "@virtual_blocks blocks"),
        ("freeness", "@freeness_text"),
        ("running / waiting", "@running / @waiting"),
        ("high priority", "@high_priority"),
        ("preemptions", "@preemptions"),
        ("dispatched", "@dispatched"),
    ]

    # KV usage: used, virtual on top of used, free.
    kv_range = Range1d(0, 1)
    kv = figure(
        title="KV cache per instance (share of blocks)", y_range=instance_range, x_range=kv_range,
        height=BAR_HEIGHT, sizing_mode="stretch_width", tools="", toolbar_location=None, name="llumnix_kv",
    )
    kv.hbar_stack(
        ["used", "virtual", "free"], y="instance_id", height=0.7, source=inst,
        color=[dd.COLOR_USED, dd.COLOR_VIRTUAL, dd.COLOR_FREE], line_color="white",
        legend_label=["used", "virtual (queued + headroom)", "free"],
    )
    kv.add_tools(HoverTool(tooltips=instance_tooltips))
    kv.xaxis.axis_label = "share of the instance's KV blocks"
    kv.legend.location = "bottom_right"
    kv.legend.orientation = "horizontal"
    kv.add_layout(kv.legend[0], "below")

    # Queues: running and waiting requests.
    queue_range = Range1d(0, 4)
    queue = figure(
        title="Requests per instance", y_range=instance_range, x_range=queue_range, height=BAR_HEIGHT,
        sizing_mode="stretch_width", tools="", toolbar_location=None, name="llumnix_queues",
    )
    queue.hbar_stack(
        ["running", "waiting"], y="instance_id", height=0.7, source=inst,
        color=[dd.COLOR_RUNNING, dd.COLOR_WAITING], line_color="white", legend_label=["running", "waiting"],
    )
    queue.add_tools(HoverTool(tooltips=instance_tooltips))
    queue.xaxis.axis_label = "requests"
    queue.legend.orientation = "horizontal"
    queue.add_layout(queue.legend[0], "below")

    # Freeness with the migration thresholds.
    freeness_range = Range1d(0, 100)
    free = figure(
        title="Freeness (free blocks per request)", y_range=instance_range, x_range=freeness_range,
        height=BAR_HEIGHT, sizing_mode="stretch_width", tools="", toolbar_location=None, name="llumnix_freeness",
    )
    free.hbar(y="instance_id", right="freeness_bar", left=0, height=0.7, source=inst, color="freeness_color")
    free.text(
        x="freeness_bar", y="instance_id", text="freeness_text", source=inst, text_font_size="11px",
        x_offset="freeness_text_offset", text_align="freeness_text_align", text_baseline="middle",
        text_color="#343a40",
    )
    free.add_tools(HoverTool(tooltips=instance_tooltips))
    out_span = Span(location=10, dimension="height", line_color=dd.COLOR_LOW, line_dash="dashed", line_width=2)
    in_span = Span(location=60, dimension="height", line_color=dd.COLOR_HIGH, line_dash="dashed", line_width=2)
    for item in (out_span, in_span):
        free.add_layout(item)
    free.xaxis.axis_label = "blocks per request (red: migrates out, green: takes migrations)"

    # Migration timeline: one segment per migration from (start, src) to (end, dst).
    time_range = Range1d(0, 1)
    timeline_range = FactorRange()
    mig = sources["migrations"]
    timeline = figure(
        title="Live migrations: src -> dst (green committed, red failed; hover for downtime)",
        x_axis_type="datetime", x_range=time_range, y_range=timeline_range,
        height=TIME_HEIGHT, sizing_mode="stretch_width", tools="", toolbar_location=None, name="llumnix_timeline",
    )
    seg = timeline.segment(x0="start", y0="src", x1="end", y1="dst", source=mig, line_color="color", line_width=3,
                           line_alpha=0.85)
    heads = timeline.scatter(x="end", y="dst", source=mig, marker="triangle", size=10, color="color")
    timeline.scatter(x="start", y="src", source=mig, marker="circle", size=6, color="color")
    timeline.add_tools(HoverTool(renderers=[seg, heads], tooltips=[
        ("request", "@request_id"), ("move", "@src -> @dst"), ("outcome", "@outcome"),
        ("downtime", "@downtime_ms ms"), ("total", "@total_ms ms"), ("blocks", "@blocks in @stages stages"),
        ("path", "@transport"),
        ("why", "@reason"),
    ]))
    _time_axis(timeline)
    timeline.ygrid.grid_line_color = "#eeeeee"

    # Rolling latency per priority class, with the SLO targets.
    lat = sources["latency"]
    latency_figs = []
    slo_spans: dict[str, Span] = {}
    for metric, title in (("ttft", "TTFT rolling P50 / P99 (ms)"), ("tpot", "TPOT rolling P50 / P99 (ms)")):
        p = figure(
            title=title, x_axis_type="datetime", x_range=time_range, height=TIME_HEIGHT,
            sizing_mode="stretch_width", tools="", toolbar_location=None, name=f"llumnix_{metric}",
        )
        for cls, color in PRIORITY_COLORS.items():
            p.line(x="time", y=f"{metric}_p50_{cls}", source=lat, color=color, line_width=2,
                   legend_label=f"{cls} P50")
            p.line(x="time", y=f"{metric}_p99_{cls}", source=lat, color=color, line_width=2, line_dash="dashed",
                   legend_label=f"{cls} P99")
            if metric == "ttft":
                span = Span(location=None, dimension="width", line_color=color, line_dash="dotted", line_width=2,
                            visible=False)
                p.add_layout(span)
                slo_spans[cls] = span
        p.legend.orientation = "horizontal"
        p.add_layout(p.legend[0], "below")
        p.y_range.start = 0
        _time_axis(p)
        latency_figs.append(p)

    # Instance count over time (and the scaling target).
    count_range = Range1d(0, 4)
    count = figure(
        title="Instances", x_axis_type="datetime", x_range=time_range, y_range=count_range, height=TIME_HEIGHT,
        sizing_mode="stretch_width", tools="", toolbar_location=None, name="llumnix_instance_count",
    )
    count.step(x="time", y="count", source=sources["instance_count"], mode="after", line_width=2, color="#495057",
               legend_label="instances")
    target_span = Span(location=None, dimension="width", line_color="#ff9f1c", line_dash="dashed", line_width=2,
                       visible=False)
    count.add_layout(target_span)
    count.legend.orientation = "horizontal"
    count.add_layout(count.legend[0], "below")
    _time_axis(count)

    for p in (kv, queue, free, timeline, *latency_figs, count):
        _style(p)
    header = Div(text="", sizing_mode="stretch_width", name="llumnix_header")
    decisions = Div(text="", sizing_mode="stretch_width", name="llumnix_decisions")
    root = column(
        header,
        row(kv, queue, free, sizing_mode="stretch_width"),
        timeline,
        row(latency_figs[0], latency_figs[1], count, sizing_mode="stretch_width"),
        decisions,
        sizing_mode="stretch_width",
        name="llumnix_root",
    )
    return DashboardFigures(
        root=root, sources=sources, header=header, decisions=decisions, instance_range=instance_range,
        timeline_range=timeline_range, kv_range=kv_range, queue_range=queue_range, freeness_range=freeness_range,
        time_range=time_range, count_range=count_range, migrate_out_span=out_span, migrate_in_span=in_span,
        freeness_figure=free, target_span=target_span, slo_spans=slo_spans,
    )
