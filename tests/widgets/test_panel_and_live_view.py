"""The control panel and the inline live view against an in-memory scheduler (no cluster)."""

from __future__ import annotations

import dataclasses
import time

import pytest

from llumnix_dask.config import PolicyConfig
from llumnix_dask.policy.load import InstanceLoad
from llumnix_dask.scheduler.core import GlobalScheduler
from llumnix_dask.widgets.live_view import LiveView, render_html
from llumnix_dask.widgets.panel import ControlPanel


@pytest.fixture
def scheduler() -> GlobalScheduler:
    gs = GlobalScheduler(PolicyConfig())
    gs.register("instance-0", "tcp://a:1", InstanceLoad("instance-0", total_blocks=100, used_blocks=20, num_running=2,
                                                        running_blocks=20))
    gs.register("instance-1", "tcp://b:1", InstanceLoad("instance-1", total_blocks=100, used_blocks=0))
    return gs


def panel_for(gs: GlobalScheduler) -> ControlPanel:
    """What ``cluster.panel()`` builds, with the plugin's set_policy semantics (validated, error -> ValueError)."""

    def set_policy(**knobs):
        return dataclasses.asdict(gs.set_policy(knobs))

    return ControlPanel(set_policy, lambda: dataclasses.asdict(gs.policy))


def test_every_widget_starts_at_the_running_policy(scheduler):
    scheduler.set_policy({"dispatch": "infaas", "migrate_out_freeness": 3.0, "ttft_slo_high_s": 0.2})
    panel = panel_for(scheduler)
    assert panel.dispatch.value == "infaas"
    assert panel.migration_thresholds.value == (3.0, 60.0)
    assert panel.ttft_slo_high_s.value == 0.2 and panel.ttft_slo_s.value == 0.0
    assert panel.instance_range.value == (1, 16)


@pytest.mark.parametrize(
    "widget, value, expected",
    [
        ("dispatch", "round_robin", {"dispatch": "round_robin"}),
        ("migration_enabled", False, {"migration_enabled": False}),
        ("migration_thresholds", (0.0, 120.0), {"migrate_out_freeness": 0.0, "migrate_in_freeness": 120.0}),
        ("request_selection", "LCR", {"request_selection": "LCR"}),
        ("priority_headroom_blocks", 64, {"priority_headroom_blocks": 64}),
        ("ttft_slo_s", 1.5, {"ttft_slo_s": 1.5}),
        ("scaling_enabled", True, {"scaling_enabled": True}),
        ("scaling_band", (10.0, 90.0), {"scale_up_freeness": 10.0, "scale_down_freeness": 90.0}),
        ("instance_range", (2, 6), {"min_instances": 2, "max_instances": 6}),
    ],
)
def test_each_knob_reaches_the_scheduler(scheduler, widget, value, expected):
    panel = panel_for(scheduler)
    getattr(panel, widget).value = value
    policy = dataclasses.asdict(scheduler.policy)
    assert {k: policy[k] for k in expected} == expected
    assert "applied" in panel.status.value


def test_clearing_an_slo_removes_the_target(scheduler):
    scheduler.set_policy({"ttft_slo_s": 2.0})
    panel = panel_for(scheduler)
    panel.ttft_slo_s.value = 0.0
    assert scheduler.policy.ttft_slo_s is None


def test_a_rejected_value_is_shown_and_the_widget_reverts(scheduler):
    panel = panel_for(scheduler)
    panel.priority_headroom_blocks.value = 100
    panel.ttft_slo_high_s.value = -3.0
    assert "rejected" in panel.status.value and "PolicyConfig.ttft_slo_high_s" in panel.status.value
    assert scheduler.policy.ttft_slo_high_s is None and panel.ttft_slo_high_s.value == 0.0
    assert scheduler.policy.priority_headroom_blocks == 100  # earlier changes stay


def test_a_policy_outside_the_slider_range_is_shown_not_clipped(scheduler):
    scheduler.set_policy({"migrate_in_freeness": 5000.0})
    panel = panel_for(scheduler)
    assert panel.migration_thresholds.value == (10.0, 5000.0)


def test_live_view_html_lists_instances_queues_and_migrations(scheduler):
    scheduler.migration_finished("instance-0", "instance-1", "req-9", True, "low freeness",
                                 {"downtime_s": 0.0031, "total_s": 0.04})
    page = render_html(scheduler.snapshot())
    assert "instance-0" in page and "instance-1" in page and "20/100" in page
    assert "req-9" in page and "downtime 3.1 ms" in page


def test_live_view_refreshes_and_stops_when_the_cluster_is_gone(scheduler):
    alive = {"yes": True}

    def snapshot():
        if not alive["yes"]:
            raise RuntimeError("cluster closed")
        return scheduler.snapshot()

    view = LiveView(snapshot, interval_s=0.02)
    deadline = time.monotonic() + 10
    while view.updates < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert view.updates >= 3 and "instance-1" in view.html.value
    alive["yes"] = False
    while view.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not view.running
    assert "no data" in view.html.value and "cluster closed" in view.html.value


def test_live_view_rejects_a_bad_interval():
    with pytest.raises(ValueError, match="interval_s"):
        LiveView(dict, interval_s=0)
