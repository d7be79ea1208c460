from llumnix_dask.config import PolicyConfig
from llumnix_dask.policy.load import InstanceLoad, RequestLoad
from llumnix_dask.policy.migration import pair_instances, select_request


def inst(iid, total, running_blocks, n, **kw):
    return InstanceLoad(iid, total, running_blocks, num_running=n, running_blocks=running_blocks, **kw)


CFG = PolicyConfig(migrate_out_freeness=10, migrate_in_freeness=60)


def test_pairs_most_loaded_with_least_loaded():
    loads = [
        inst("s1", 100, 95, 2),  # F = 2.5
        inst("s2", 100, 84, 2),  # F = 8
        inst("mid", 100, 60, 2),  # F = 20: neither
        inst("d1", 1000, 300, 7),  # F = 100
        inst("d2", 1000, 0, 0),  # F = 1000
        inst("d3", 1000, 650, 5),  # F = 70
    ]
    pairs = pair_instances(loads, CFG)
    assert [(p.src, p.dst) for p in pairs] == [("s1", "d2"), ("s2", "d1")]
    assert pairs[0].reason["src_freeness"] == 2.5 and pairs[0].reason["dst_freeness"] == 1000


def test_no_migration_for_baselines_or_when_disabled():
    loads = [inst("s", 100, 95, 2), inst("d", 1000, 0, 0)]
    assert pair_instances(loads, CFG) != []
    for policy in ("infaas", "round_robin", "random"):
        assert pair_instances(loads, PolicyConfig(dispatch=policy)) == []
    assert pair_instances(loads, PolicyConfig(migration_enabled=False)) == []


def test_one_migration_per_instance_at_a_time():
    loads = [inst("s", 100, 95, 2, migrating=True), inst("s2", 100, 96, 2), inst("d", 1000, 0, 0, migrating=True),
             inst("d2", 1000, 0, 0)]
    assert [(p.src, p.dst) for p in pair_instances(loads, CFG)] == [("s2", "d2")]


def test_terminating_and_preempted_instances_are_sources():
    term = inst("t", 1000, 10, 1, terminating=True)
    empty_term = InstanceLoad("e", 1000, 0, terminating=True)
    pre = InstanceLoad.from_requests("p", 1000, 0, waiting=(RequestLoad("q", 5, preempted=True),))  # F = 995
    dsts = [inst("d1", 1000, 0, 0), inst("d2", 1000, 100, 1)]
    pairs = pair_instances([pre, empty_term, term, *dsts], CFG)
    assert [(p.src, p.dst, p.reason["why"]) for p in pairs] == [("t", "d1", "terminating"), ("p", "d2", "preempted")]


RUN = (
    RequestLoad("long", 40, num_tokens=620, arrival_time=1.0),
    RequestLoad("short", 5, num_tokens=70, arrival_time=3.0),
    RequestLoad("late", 20, num_tokens=300, arrival_time=5.0),
)
WAIT = (RequestLoad("q1", 30, num_tokens=480, arrival_time=6.0), RequestLoad("q2", 2, num_tokens=20, arrival_time=7.0))
SRC = InstanceLoad.from_requests("s", 100, 65, running=RUN, waiting=WAIT)
DST = InstanceLoad("d", 1000, 0)


def pick(rule, src=SRC, dst=DST):
    r = select_request(src, dst, PolicyConfig(request_selection=rule))
    return None if r is None else r.request_id


def test_request_selection_rules():
    assert pick("SR") == "short"  # fewest tokens among the running requests
    assert pick("LR") == "long"
    assert pick("LCR") == "late"
    assert pick("FCW") == "q1"


def test_selection_skips_migrating_and_requests_that_do_not_fit():
    migrating = tuple(RequestLoad(r.request_id, r.blocks, num_tokens=r.num_tokens, arrival_time=r.arrival_time,
                                  migrating=r.request_id == "q2") for r in RUN + WAIT)
    src = InstanceLoad.from_requests("s", 100, 65, running=migrating[:3], waiting=migrating[3:])
    assert pick("SR", src) == "short"
    queued_only = InstanceLoad.from_requests("s", 100, 0, waiting=migrating[3:])
    assert pick("SR", queued_only) == "q1"  # no running request: a queued one (q2 is migrating)
    small_dst = InstanceLoad("d", 100, 75)  # 25 free blocks: "long" (40) and "q1" (30) do not fit
    assert pick("LR", src, small_dst) == "late"
    assert pick("FCW", src, small_dst) == "short"  # no fitting queued request -> shortest running
    assert pick("SR", InstanceLoad("s", 100, 0), DST) is None


def test_a_queued_request_moves_only_where_it_can_start_beside_the_destination_queue():
    # 40 free blocks, but the destination's own queue already needs 20 of them: q1 (30) would only wait there.
    dst = InstanceLoad.from_requests("d", 100, 60, waiting=(RequestLoad("dq", 20, num_tokens=320),))
    assert dst.free_blocks == 40 and dst.waiting_demand_blocks == 20
    assert pick("FCW", SRC, dst) == "q2"  # the first queued request that can start there
    assert pick("FCW", SRC, InstanceLoad("d", 100, 60)) == "q1"  # no queue there: the head of line moves


def test_selection_moves_normal_requests_before_high_priority_ones():
    from llumnix_dask.request import Priority

    hp = RequestLoad("hp", 2, priority=Priority.HIGH, num_tokens=20, arrival_time=0.0)
    normal = RequestLoad("n", 30, num_tokens=480, arrival_time=1.0)
    src = InstanceLoad.from_requests("s", 100, 32, running=(hp, normal))
    assert pick("SR", src) == "n"  # hp is shorter, but its headroom is meant to push the others away
    assert select_request(src, DST, PolicyConfig(priorities_enabled=False)).request_id == "hp"
    only_hp = InstanceLoad.from_requests("s", 100, 2, running=(hp,))
    assert pick("SR", only_hp) == "hp"


def test_a_running_request_is_planned_only_where_the_destination_would_accept_it():
    # An 85-block request and 97 free blocks: the destination keeps 16 free when it accepts a migration,
    # so it would refuse; the plan must not be made (it was retried every tick before).
    big = RequestLoad("big", 85, num_tokens=1360, arrival_time=0.0)
    src = InstanceLoad.from_requests("s", 200, 190, running=(big,))
    dst = InstanceLoad("d", 200, 103)
    assert dst.free_blocks == 97
    assert select_request(src, dst, CFG).request_id == "big"
    assert select_request(src, dst, CFG, dst_reserve_blocks=16) is None
    assert select_request(src, InstanceLoad("d", 200, 99), CFG, dst_reserve_blocks=16).request_id == "big"


def test_high_priority_requests_stay_put_when_the_policy_says_so():
    from llumnix_dask.request import Priority

    src = InstanceLoad.from_requests("a", 100, 60, running=(RequestLoad("h", 60, priority=Priority.HIGH,
                                                                          num_tokens=900),))
    dst = InstanceLoad("b", 100, 0)
    assert select_request(src, dst, PolicyConfig()).request_id == "h"  # nothing else to move: it may go
    assert select_request(src, dst, PolicyConfig(migrate_high_priority=False)) is None


def test_an_instance_kept_for_high_priority_requests_does_not_take_a_destination_it_cannot_use():
    # A holds only high-priority requests (its headroom makes it look overloaded, but with
    # migrate_high_priority off nothing on it may move; freeness -5.5); B's head-of-line normal request cannot
    # start (freeness -2.5). The one free destination C must go to B, though A looks the more loaded.
    from llumnix_dask.request import Priority

    cfg = PolicyConfig(migrate_out_freeness=3, migrate_in_freeness=3, priority_instance_blocks=10,
                       migrate_high_priority=False)
    high = tuple(RequestLoad(f"h{i}", 8, priority=Priority.HIGH, num_tokens=120) for i in range(4))
    a = InstanceLoad.from_requests("a", 100, 32, running=high)
    b = InstanceLoad.from_requests("b", 100, 80, running=(RequestLoad("n1", 80, num_tokens=1270),),
                                   waiting=(RequestLoad("n2", 25, num_tokens=400),))
    c = InstanceLoad("c", 100, 0)
    assert [(p.src, p.dst) for p in pair_instances([a, b, c], cfg)] == [("b", "c")]
    # Allowed to move high-priority requests, A is a source again: it takes the second destination.
    d = InstanceLoad("d", 100, 0)
    assert [(p.src, p.dst) for p in pair_instances([a, b, c, d], PolicyConfig(
        migrate_out_freeness=3, migrate_in_freeness=3, priority_instance_blocks=10))] == [("a", "c"), ("b", "d")]
    assert [(p.src, p.dst) for p in pair_instances([a, b, c, d], cfg)] == [("b", "c")]
    # A draining instance gives up its high-priority requests even with migrate_high_priority off.
    draining = InstanceLoad.from_requests("a", 100, 32, running=high, terminating=True)
    assert [p.src for p in pair_instances([draining, c], cfg)] == ["a"]
    assert select_request(draining, c, cfg).request_id.startswith("h")
    assert select_request(a, c, cfg) is None
