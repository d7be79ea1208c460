import pytest

from llumnix_dask.config import PolicyConfig
from llumnix_dask.policy.load import InstanceLoad
from llumnix_dask.policy.scaling import ScalingState, cluster_freeness, instances_to_add, scaling_decision


def inst(iid, total, running_blocks, n, **kw):
    return InstanceLoad(iid, total, running_blocks, num_running=n, running_blocks=running_blocks, **kw)


CFG = PolicyConfig(scaling_enabled=True, scale_up_freeness=25, scale_down_freeness=75, scaling_patience_s=10,
                   min_instances=1, max_instances=3)


def test_scale_up_after_patience():
    loads = [inst("a", 100, 90, 2), inst("b", 100, 80, 2)]  # F = 5, 10 -> avg 7.5 < 25
    state = ScalingState()
    assert scaling_decision(loads, CFG, 0.0, state).action == "none"
    d = scaling_decision(loads, CFG, 5.0, state)
    assert d.action == "none" and d.reason["outside_band_s"] == 5.0
    d = scaling_decision(loads, CFG, 10.0, state)
    assert d.action == "up" and d.reason["average_freeness"] == 7.5
    # The clock restarts after an action.
    assert scaling_decision(loads, CFG, 11.0, state).action == "none"


def test_back_inside_band_resets_clock():
    hot = [inst("a", 100, 90, 2)]
    ok = [inst("a", 100, 0, 2)]  # F = 50
    state = ScalingState()
    scaling_decision(hot, CFG, 0.0, state)
    scaling_decision(ok, CFG, 8.0, state)
    assert scaling_decision(hot, CFG, 12.0, state).action == "none"
    assert scaling_decision(hot, CFG, 22.0, state).action == "up"


def test_no_scale_up_at_max_instances():
    loads = [inst(k, 100, 90, 2) for k in "abc"]
    cfg = PolicyConfig(scaling_enabled=True, scaling_patience_s=0, max_instances=3)
    assert scaling_decision(loads, cfg, 0.0, ScalingState()).action == "none"


def test_scale_down_drains_instance_with_fewest_requests():
    loads = [inst("a", 1000, 100, 5), inst("b", 1000, 300, 1), inst("c", 1000, 0, 1)]  # F = 180, 700, 1000
    cfg = PolicyConfig(scaling_enabled=True, scaling_patience_s=0)
    d = scaling_decision(loads, cfg, 0.0, ScalingState())
    # b and c hold one request each; c is the freer of the two.
    assert (d.action, d.instance_id) == ("down", "c")


def test_no_scale_down_at_min_or_while_draining():
    cfg = PolicyConfig(scaling_enabled=True, scaling_patience_s=0, min_instances=1)
    assert scaling_decision([InstanceLoad("a", 1000, 0)], cfg, 0.0, ScalingState()).action == "none"
    loads = [InstanceLoad("a", 1000, 0), InstanceLoad("b", 1000, 0), inst("t", 1000, 5, 1, terminating=True)]
    d = scaling_decision(loads, cfg, 0.0, ScalingState())
    assert d.action == "none" and d.reason["draining"] == 1 and d.reason["instances"] == 2


def test_disabled_scaling_never_acts():
    loads = [inst("a", 100, 99, 5)]
    assert scaling_decision(loads, PolicyConfig(scaling_patience_s=0), 0.0, ScalingState()).action == "none"


def test_average_is_request_weighted_so_an_empty_instance_does_not_trigger_a_drain():
    # Two full instances with 10 requests each and one just started (empty, counted as 1 request): the plain mean
    # of the per-instance freeness would be (0 + 0 + 100) / 3 = 33 > y = 30; over the cluster it is 100 / 21.
    loads = [inst("a", 100, 100, 10), inst("b", 100, 100, 10), InstanceLoad("new", 100, 0)]
    cfg = PolicyConfig(scaling_enabled=True, scale_up_freeness=10, scale_down_freeness=30, scaling_patience_s=0,
                       max_instances=4)
    d = scaling_decision(loads, cfg, 0.0, ScalingState())
    assert d.action == "up" and d.reason["average_freeness"] == pytest.approx(100 / 21)
    # An idle cluster has the freeness of an idle instance.
    assert cluster_freeness([InstanceLoad("a", 100, 0), InstanceLoad("b", 100, 0)], cfg) == 100.0


def test_no_drain_that_would_push_the_cluster_back_below_the_band():
    # Two instances of 100 blocks holding 40 blocks over 1 request each: average freeness 60 > y = 40, but
    # without one of them the other would hold both requests' 80 blocks: (100 - 80) / 2 = 10 < x. A drain now
    # would buy the instance back at the next tick.
    cfg = PolicyConfig(scaling_enabled=True, scale_up_freeness=10, scale_down_freeness=40, scaling_patience_s=0)
    loads = [inst("a", 100, 40, 1), inst("b", 100, 40, 1)]
    d = scaling_decision(loads, cfg, 0.0, ScalingState())
    assert d.action == "none"
    assert d.reason["average_freeness"] == 60 and d.reason["freeness_after_drain"] == 10
    # With less load the drain keeps the cluster above y, and it happens.
    loads = [inst("a", 100, 10, 1), inst("b", 100, 5, 1)]
    d = scaling_decision(loads, cfg, 0.0, ScalingState())
    assert (d.action, d.instance_id) == ("down", "b") and d.reason["freeness_after_drain"] == 42.5


def test_scale_up_adds_as_many_instances_as_the_load_needs():
    cfg = PolicyConfig(scaling_enabled=True, scale_up_freeness=10, scale_down_freeness=60, scaling_patience_s=0,
                       max_instances=8)
    # 2 x 100 blocks, 20 requests holding 190 blocks: F = 0.5. n empty instances give (10 + 100 n) / (20 + n) >= 10
    # from n = 190 / 90 -> 3.
    loads = [inst("a", 100, 95, 10), inst("b", 100, 95, 10)]
    assert instances_to_add(loads, cfg) == 3
    d = scaling_decision(loads, cfg, 0.0, ScalingState())
    assert (d.action, d.count) == ("up", 3)
    # Never beyond max_instances; at least one when just below x.
    assert instances_to_add(loads, PolicyConfig(scale_up_freeness=10, max_instances=3)) == 1
    assert instances_to_add([inst("a", 100, 55, 5)], cfg) == 1


def test_instances_still_starting_count_as_empty_ones_and_block_a_drain():
    cfg = PolicyConfig(scaling_enabled=True, scale_up_freeness=10, scale_down_freeness=60, scaling_patience_s=0,
                       max_instances=8)
    loads = [inst("a", 100, 95, 10), inst("b", 100, 95, 10)]  # F = 0.5: three more instances wanted
    d = scaling_decision(loads, cfg, 0.0, ScalingState(), starting=2)
    assert (d.action, d.count) == ("up", 1)  # two already on their way
    assert scaling_decision(loads, cfg, 0.0, ScalingState(), starting=3).action == "none"
    # An idle cluster drains, but not while an instance it asked for is still starting.
    idle = [InstanceLoad("a", 100, 0), InstanceLoad("b", 100, 0)]
    assert scaling_decision(idle, cfg, 0.0, ScalingState()).action == "down"
    d = scaling_decision(idle, cfg, 0.0, ScalingState(), starting=1)
    assert d.action == "none" and d.reason["starting"] == 1
