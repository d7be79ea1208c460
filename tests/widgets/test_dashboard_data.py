"""The dashboard's data (pure transforms of a scheduler snapshot) and its Bokeh page, without a cluster."""

from __future__ import annotations

import dataclasses
import math

import pytest

from llumnix_dask.config import PolicyConfig
from llumnix_dask.policy.load import InstanceLoad
from llumnix_dask.scheduler.core import GlobalScheduler
from llumnix_dask.scheduler.stats import FinishedRequest
from llumnix_dask.widgets import dashboard_data as dd


def make_snapshot(now: float = 1000.0) -> dict:
    """A real GlobalScheduler's snapshot: 3 instances (one draining), a migration, finished requests."""
    clock = [now - 30.0]
    gs = GlobalScheduler(PolicyConfig(ttft_slo_s=0.5), clock=lambda: clock[0])
    gs.register("instance-0", "tcp://a:1", InstanceLoad("instance-0", total_blocks=100, used_blocks=10,
                                                        num_running=1, running_blocks=10))
    gs.register("instance-10", "tcp://c:1", InstanceLoad("instance-10", total_blocks=100, used_blocks=0))
    gs.register("instance-2", "tcp://b:1", InstanceLoad("instance-2", total_blocks=100, used_blocks=95,
                                                        num_running=3, running_blocks=95, num_waiting=2,
                                                        waiting_demand_blocks=40, hol_demand_blocks=20))
    gs.drain("instance-10", "test")
    clock[0] = now - 1.0
    gs.migration_finished("instance-2", "instance-0", "r7", True, "low freeness",
                          {"downtime_s": 0.004, "total_s": 0.25, "blocks": 8, "num_stages": 2, "transport": "dask"})
    gs.migration_finished("instance-2", "instance-0", "r8", False, "refused", {})
    for i, (prio, ttft) in enumerate([(0, 0.1), (0, 0.3), (1, 0.05)]):
        gs.request_finished(FinishedRequest(f"r{i}", prio, now, ttft, 0.02, 1.0, 10, slo_ttft_s=0.2))
    clock[0] = now
    return gs.snapshot()


def test_one_row_per_instance_in_natural_order_with_shares_of_the_cache():
    cols = dd.instance_columns(make_snapshot())
    assert cols["instance_id"] == ["instance-0", "instance-2", "instance-10"]
    used, virtual, free = cols["used"], cols["virtual"], cols["free"]
    assert used[0] == pytest.approx(0.10) and free[0] == pytest.approx(0.90)
    # instance-2: 95 used + head-of-line demand 20 virtual > cache: virtual drawn beyond the cache, no free.
    assert used[1] == pytest.approx(0.95) and virtual[1] == pytest.approx(0.20) and free[1] == 0.0
    assert (cols["running"][1], cols["waiting"][1]) == (3, 2)
    assert cols["state"] == ["serving", "serving", "draining"]
    assert cols["freeness_text"][2] == "draining"


def test_freeness_colors_follow_the_migration_thresholds_and_bars_stay_on_the_axis():
    snap = make_snapshot()
    cols = dd.instance_columns(snap)
    lo, hi = dd.freeness_axis(snap)
    assert lo <= 10.0 and hi >= 60.0  # both thresholds visible
    # instance-0 has freeness 90 (> migrate in), instance-2 is negative (< migrate out).
    assert cols["freeness_color"][:2] == [dd.COLOR_HIGH, dd.COLOR_LOW]
    assert all(lo <= b <= hi for b in cols["freeness_bar"])


def test_an_idle_instance_does_not_squash_the_thresholds():
    snap = {"policy": {"migrate_out_freeness": 10.0, "migrate_in_freeness": 60.0},
            "instances": [{"instance_id": "i0", "freeness": 40960.0, "total_blocks": 40960}]}
    lo, hi = dd.freeness_axis(snap)
    assert hi < 1000 and dd.instance_columns(snap)["freeness_bar"] == [hi]
    assert dd.instance_columns(snap)["freeness_text"] == ["40960"]


def test_migrations_become_segments_from_src_to_dst():
    cols = dd.migration_columns(make_snapshot())
    assert cols["request_id"] == ["r7", "r8"]
    assert (cols["src"][0], cols["dst"][0]) == ("instance-2", "instance-0")
    assert cols["end"][0] - cols["start"][0] == pytest.approx(250.0)
    assert cols["downtime_ms"][0] == pytest.approx(4.0) and cols["blocks"][0] == 8 and cols["stages"][0] == 2
    assert cols["transport"] == ["dask", "-"]
    assert cols["color"] == [dd.COLOR_OK, dd.COLOR_FAILED]


def test_instance_count_reaches_now_and_latency_rows_are_per_priority():
    snap = make_snapshot(now=1000.0)
    count = dd.instance_count_columns(snap)
    assert count["count"] == [1, 2, 3, 3] and count["time"][-1] == 1000.0 * 1000
    row = dd.latency_row(snap)
    assert row["ttft_p50_normal"] == pytest.approx(200.0)
    assert row["ttft_p50_high"] == pytest.approx(50.0)
    assert dd.slo_lines(snap["policy"]) == {"normal": 500.0, "high": None}


def test_latency_history_hands_out_only_new_rows_and_stays_bounded():
    history = dd.LatencyHistory(maxlen=3)
    for t in range(5):
        history.sample({"time": float(t)})
        history.sample({"time": float(t) + 0.01})  # too soon after the previous sample: skipped
    cols, seq = history.since(0)
    assert cols["time"] == [2000.0, 3000.0, 4000.0] and seq == 5
    history.sample({"time": 9.0})
    cols, seq = history.since(seq)
    assert cols["time"] == [9000.0] and seq == 6
    assert math.isnan(cols["ttft_p99_high"][0])


def test_page_model_fills_its_sources_from_a_snapshot():
    from llumnix_dask.widgets.dashboard import LlumnixDashboard

    history = dd.LatencyHistory()

    def snapshot():
        snap = make_snapshot()
        history.sample(snap)
        snap["_latency_history"] = history
        return snap

    page = LlumnixDashboard(snapshot)
    page.update()
    assert page.sources["instances"].data["instance_id"] == ["instance-0", "instance-2", "instance-10"]
    assert list(page.figures.instance_range.factors) == ["instance-10", "instance-2", "instance-0"]
    assert page.sources["migrations"].data["request_id"] == ["r7", "r8"]
    assert len(page.sources["latency"].data["time"]) == 1
    assert page.figures.slo_spans["normal"].visible and page.figures.slo_spans["normal"].location == 500.0
    assert not page.figures.slo_spans["high"].visible
    assert (page.figures.migrate_out_span.location, page.figures.migrate_in_span.location) == (10.0, 60.0)
    assert "instances</span> <b>3</b>" in page.figures.header.text


def test_page_without_the_plugin_says_how_to_install_it():
    from llumnix_dask.widgets.dashboard import LlumnixDashboard

    page = LlumnixDashboard(lambda: None)
    page.update()
    assert "--preload llumnix_dask.preload.scheduler" in page.figures.header.text


def test_policy_dict_has_the_slo_fields_the_page_reads():
    fields = {f.name for f in dataclasses.fields(PolicyConfig)}
    assert {"ttft_slo_s", "ttft_slo_high_s", "migrate_out_freeness", "migrate_in_freeness"} <= fields
