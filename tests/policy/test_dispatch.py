import pytest

from llumnix_dask.config import PolicyConfig
from llumnix_dask.policy.dispatch import DispatchState, NoInstanceAvailable, choose_instance
from llumnix_dask.policy.load import InstanceLoad, RequestLoad
from llumnix_dask.request import Priority


def inst(iid, total, running_blocks, n, **kw):
    return InstanceLoad(iid, total, running_blocks, num_running=n, running_blocks=running_blocks, **kw)


REQ = RequestLoad("r", 4)


def test_llumnix_picks_freest_instance():
    loads = [inst("a", 1000, 600, 4), inst("b", 1000, 300, 7), inst("c", 1000, 900, 1)]
    # freeness: a = 400/4 = 100, b = 700/7 = 100, c = 100/1 = 100 -> tie goes to the first.
    d = choose_instance(loads, REQ, PolicyConfig(), DispatchState())
    assert d.instance_id == "a" and d.reason["freeness"] == 100
    loads[1] = inst("b", 1000, 290, 7)  # b: 710/7 = 101.4
    assert choose_instance(loads, REQ, PolicyConfig(), DispatchState()).instance_id == "b"


def test_queued_demand_counts_so_instance_with_stuck_queue_is_avoided():
    stuck = InstanceLoad.from_requests("a", 100, 10, running=(RequestLoad("x", 10),), waiting=(RequestLoad("q", 85),))
    light = inst("b", 100, 40, 2)
    # a: (100 - 10 - 85) / 2 = 2.5 ; b: 60 / 2 = 30
    assert choose_instance([stuck, light], REQ, PolicyConfig(), DispatchState()).instance_id == "b"


def test_busy_filter_and_all_busy_fallback():
    # a is busy (freeness 5 < 10) but would otherwise win a tie-break by order; b is not busy.
    loads = [inst("a", 100, 90, 2), inst("b", 100, 70, 2)]
    d = choose_instance(loads, REQ, PolicyConfig(busy_freeness=10), DispatchState())
    assert d.instance_id == "b" and d.reason["busy_filtered"] == 1
    # Everyone busy: the freest of them still gets the request.
    loads = [inst("a", 100, 95, 2), inst("b", 100, 90, 2)]
    d = choose_instance(loads, REQ, PolicyConfig(busy_freeness=10), DispatchState())
    assert d.instance_id == "b" and d.reason["all_busy"]


def test_infaas_dispatches_like_llumnix():
    loads = [inst("a", 1000, 600, 4), inst("b", 1000, 200, 4)]
    assert choose_instance(loads, REQ, PolicyConfig(dispatch="infaas"), DispatchState()).instance_id == "b"


def test_round_robin_goes_to_fewest_dispatched_and_record_counts():
    loads = [inst("a", 100, 0, 0), inst("b", 100, 0, 0), inst("c", 100, 99, 9)]
    cfg, state = PolicyConfig(dispatch="round_robin"), DispatchState()
    picks = []
    for _ in range(6):
        d = choose_instance(loads, REQ, cfg, state)
        state.record(d.instance_id)
        picks.append(d.instance_id)
    # Load is ignored: the full instance c gets its turn like the others.
    assert picks == ["a", "b", "c", "a", "b", "c"]
    state.dispatched["a"] += 5
    assert choose_instance(loads, REQ, cfg, state).instance_id == "b"


def test_random_is_seeded_and_reproducible():
    loads = [inst(f"i{k}", 100, 0, 0) for k in range(8)]
    cfg = PolicyConfig(dispatch="random")
    run = lambda seed: [choose_instance(loads, REQ, cfg, DispatchState(seed)).instance_id for _ in range(1)]  # noqa: E731
    s1, s2 = DispatchState(3), DispatchState(3)
    a = [choose_instance(loads, REQ, cfg, s1).instance_id for _ in range(20)]
    b = [choose_instance(loads, REQ, cfg, s2).instance_id for _ in range(20)]
    assert a == b and len(set(a)) > 1 and run(0)


def test_terminating_never_receives():
    loads = [inst("a", 1000, 0, 0, terminating=True), inst("b", 100, 95, 5)]
    for policy in ("llumnix", "infaas", "round_robin", "random"):
        assert choose_instance(loads, REQ, PolicyConfig(dispatch=policy), DispatchState()).instance_id == "b"
    with pytest.raises(NoInstanceAvailable):
        choose_instance([loads[0]], REQ, PolicyConfig(), DispatchState())
    with pytest.raises(NoInstanceAvailable):
        choose_instance([], REQ, PolicyConfig(), DispatchState())


def test_high_priority_goes_to_the_lightest_real_load_and_normal_requests_see_the_headroom():
    hp = RequestLoad("h", 4, priority=Priority.HIGH)
    cfg = PolicyConfig(priority_headroom_blocks=400)
    # a holds one high-priority request. Real load (1000 - 100) / 2 = 450; with the headroom (1000 - 500) / 2 = 250.
    a = inst("a", 1000, 100, 2, num_high_priority=1)
    # c holds only normal requests: (1000 - 300) / 2 = 350.
    c = inst("c", 1000, 300, 2)
    # The normal request avoids the instance kept light for high priority; the high-priority one joins it.
    assert choose_instance([a, c], REQ, cfg, DispatchState()).instance_id == "c"
    d = choose_instance([a, c], hp, cfg, DispatchState())
    assert d.instance_id == "a" and d.reason["high_priority"] is True and d.reason["freeness"] == 450
    # A high-priority request still goes where the real batch is lightest: b is heavily loaded.
    b = inst("b", 1000, 700, 6)  # (1000 - 700) / 6 = 50
    assert choose_instance([b, c], hp, cfg, DispatchState()).instance_id == "c"
    # Priorities off: no headroom, both go to the freest instance, a.
    off = PolicyConfig(priorities_enabled=False)
    assert choose_instance([a, c], hp, off, DispatchState()).instance_id == "a"
    assert choose_instance([a, c], REQ, off, DispatchState()).instance_id == "a"