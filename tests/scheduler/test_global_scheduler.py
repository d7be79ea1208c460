"""The global scheduler's decisions, without a Dask cluster."""

from __future__ import annotations

import math

import pytest

from llumnix_dask.config import PolicyConfig, updated_policy
from llumnix_dask.policy.load import InstanceLoad, RequestLoad
from llumnix_dask.scheduler.core import GlobalScheduler, NoInstanceAvailable
from llumnix_dask.scheduler.stats import FinishedRequest, percentile


def idle(iid: str, blocks: int = 100) -> InstanceLoad:
    return InstanceLoad(iid, total_blocks=blocks, used_blocks=0)


def busy(iid: str, blocks: int = 100) -> InstanceLoad:
    running = (RequestLoad(f"{iid}-a", 45, num_tokens=700), RequestLoad(f"{iid}-b", 50, num_tokens=800))
    return InstanceLoad.from_requests(iid, blocks, 95, running=running)


def make(*loads: InstanceLoad, **policy) -> GlobalScheduler:
    clock = iter(range(10**6))
    gs = GlobalScheduler(PolicyConfig(**policy), clock=lambda: float(next(clock)))
    for load in loads:
        gs.register(load.instance_id, f"tcp://{load.instance_id}:1", load, name=load.instance_id)
    return gs


def test_dispatch_without_instances_says_why():
    with pytest.raises(NoInstanceAvailable, match="no engine instance"):
        make().dispatch(RequestLoad("r", 1))


def test_a_burst_spreads_over_instances_between_load_reports():
    gs = make(idle("a"), idle("b"), idle("c"))
    chosen = [gs.dispatch(gs.request_load(f"r{i}", 160)).instance_id for i in range(6)]
    assert sorted(chosen) == ["a", "a", "b", "b", "c", "c"]
    assert gs.request_locations["r5"] == chosen[5]


def test_dispatch_avoids_the_loaded_instance_and_explains_it():
    gs = make(busy("a"), idle("b"))
    assert gs.dispatch(RequestLoad("r", 2)).instance_id == "b"
    last = gs.explain(1)[0]
    assert last["kind"] == "dispatch" and last["instance_id"] == "b" and last["request_id"] == "r"
    assert last["reason"]["policy"] == "llumnix"


def test_draining_instance_gets_no_requests_and_is_migrated_from():
    gs = make(busy("a"), idle("b"), idle("c", blocks=1000))
    gs.drain("b", "test")
    assert all(gs.dispatch(RequestLoad(f"r{i}", 1)).instance_id != "b" for i in range(3))
    gs.update_load(busy("b"))  # a fresh report does not undo the drain
    assert gs.instances["b"].load.terminating
    plans = gs.plan_migrations()
    assert any(p.src.instance_id == "b" for p in plans)


def test_drain_migrates_even_when_the_policy_never_migrates():
    gs = make(busy("a"), idle("b"), dispatch="infaas")
    assert gs.plan_migrations() == []
    gs.drain("a", "scale down")
    plans = gs.plan_migrations()
    assert [(p.src.instance_id, p.dst.instance_id) for p in plans] == [("a", "b")]
    assert plans[0].request_id in ("a-a", "a-b")


@pytest.mark.parametrize("dispatch", ["infaas", "llumnix"])
def test_without_drain_by_migration_a_drained_instance_only_finishes_what_it_holds(dispatch):
    gs = make(busy("a"), idle("b"), dispatch=dispatch, drain_by_migration=False)
    gs.drain("a", "scale down")
    assert gs.plan_migrations() == []
    assert gs.dispatch(RequestLoad("r", 1)).instance_id == "b"
    gs.update_load(idle("a"))  # its requests finished
    assert [r.instance_id for r in gs.drained()] == ["a"]


def test_the_paper_preset_drains_its_baselines_without_migration():
    from llumnix_dask.sim_config import paper_policy

    assert paper_policy("L-L", dispatch="infaas").drain_by_migration is False
    assert paper_policy("L-L", dispatch="round_robin").drain_by_migration is False
    assert paper_policy("L-L").drain_by_migration is True
    assert PolicyConfig(dispatch="infaas").drain_by_migration is True


def test_drained_instance_is_ready_to_retire_only_when_empty():
    gs = make(busy("a"), idle("b"))
    gs.drain("a", "test")
    assert gs.drained() == []
    gs.update_load(idle("a"))
    assert [r.instance_id for r in gs.drained()] == ["a"]


def test_one_migration_at_a_time_per_instance():
    gs = make(busy("a"), busy("b"), idle("c"), idle("d"))
    plans = gs.plan_migrations()
    assert len(plans) == 2
    for p in plans:
        gs.migration_started(p)
    assert gs.plan_migrations() == []
    p = plans[0]
    gs.migration_finished(p.src.instance_id, p.dst.instance_id, p.request_id, True, "ok", {"downtime_s": 0.02})
    assert gs.request_locations[p.request_id] == p.dst.instance_id
    assert gs.migration_log[-1]["downtime_s"] == 0.02
    assert gs.snapshot()["counters"]["migrations"] == 1


def test_a_planned_migration_counts_on_the_destination_before_its_next_load_report():
    # c and d look alike; a migration into c is planned, so a dispatch that comes before c reports goes to d.
    gs = make(busy("a"), idle("c"), idle("d"))
    plans = gs.plan_migrations()
    assert [(p.src.instance_id, p.dst.instance_id) for p in plans] == [("a", "c")]
    assert gs.instances["c"].load.waiting_demand_blocks == 45  # the moving request (SR: a-a, 45 blocks)
    assert gs.dispatch(RequestLoad("r", 40)).instance_id == "d"


def test_a_load_report_taken_before_a_dispatch_arrived_does_not_undo_it():
    now = [0.0]
    gs = GlobalScheduler(PolicyConfig(), clock=lambda: now[0])
    for iid in ("a", "b"):
        gs.register(iid, f"tcp://{iid}:1", idle(iid), name=iid)
    assert gs.dispatch(RequestLoad("r1", 40)).instance_id == "a"
    gs.update_load(idle("a"))  # taken before r1 reached a
    assert gs.instances["a"].load.waiting_demand_blocks == 40
    assert gs.dispatch(RequestLoad("r2", 40)).instance_id == "b"  # not a second one onto a
    gs.update_load(InstanceLoad.from_requests("a", 100, 40, running=(RequestLoad("r1", 40, num_tokens=640),)))
    assert gs.instances["a"].load.waiting_demand_blocks == 0 and not gs.instances["a"].pending  # counted once
    now[0] = 5.0  # r2 never showed up on b (refused there): it stops counting after a while,
    gs.plan_migrations()  # also on an instance that reports nothing more (idle)
    assert gs.instances["b"].load.waiting_demand_blocks == 0 and not gs.instances["b"].pending


def test_a_request_that_finished_unseen_stops_counting_at_once():
    # A short request can finish between two load reports; the idle instance then reports nothing more.
    gs = GlobalScheduler(PolicyConfig(), clock=lambda: 0.0)
    for iid in ("a", "b"):
        gs.register(iid, f"tcp://{iid}:1", idle(iid), name=iid)
    assert gs.dispatch(RequestLoad("r1", 4)).instance_id == "a"
    gs.update_load(idle("a"))  # the last report before it went idle does not list r1
    assert gs.instances["a"].load.num_waiting == 1
    gs.request_finished(FinishedRequest("r1", priority=0, finish_time=1.0, ttft=0.1, tpot=0.01, e2e=0.2))
    assert gs.instances["a"].load.num_waiting == 0 and gs.instances["a"].freeness == 100


def test_choose_to_drain_keeps_one_instance():
    gs = make(busy("a"), idle("b"))
    assert gs.choose_to_drain(1) == ["b"]
    with pytest.raises(ValueError, match="at least one must stay"):
        gs.choose_to_drain(2)


def test_scaling_up_raises_the_target_and_down_drains_the_emptiest():
    gs = make(busy("a"), scaling_enabled=True, scaling_patience_s=0, max_instances=3)
    assert gs.scaling_tick().action == "up"
    assert gs.target_instances == 2
    gs = make(idle("a"), idle("b"), scaling_enabled=True, scaling_patience_s=0)
    decision = gs.scaling_tick()
    assert decision.action == "down"
    assert gs.instances[decision.instance_id].terminating and gs.target_instances == 1


def test_a_scale_up_takes_back_a_drain_under_way_before_starting_an_instance():
    gs = make(busy("a"), busy("b"), scaling_enabled=True, scaling_patience_s=0, max_instances=4,
              scale_up_freeness=10, scale_down_freeness=60)
    gs.drain("b", "test")
    gs.target_instances = 1
    decision = gs.scaling_tick()  # a alone: (100 - 95) / 2 requests = 2.5 < x; one more instance is enough
    assert (decision.action, decision.count) == ("up", 1)
    assert not gs.instances["b"].terminating  # b serves again; nothing new to start
    assert gs.target_instances == 2
    assert any(d.kind == "drain" and "cancelled" in d.reason for d in gs.decisions)
    # a and b together are still short, (5 + 5) / 4 = 2.5: one instance is started ...
    assert gs.scaling_tick().action == "up" and gs.target_instances == 3
    # ... and while it starts it counts as an empty one, (10 + 100) / 5 = 22 > x: the same shortage is not
    # answered twice.
    assert gs.scaling_tick().action == "none" and gs.target_instances == 3


def test_instances_that_never_start_stop_counting_after_the_grace_period():
    from llumnix_dask.scheduler.core import STARTUP_GRACE_S

    now = [0.0]
    gs = GlobalScheduler(PolicyConfig(scaling_enabled=True, scaling_patience_s=0, max_instances=4,
                                      scale_up_freeness=10, scale_down_freeness=60), clock=lambda: now[0])
    gs.register("a", "tcp://a:1", busy("a"), name="a")
    assert gs.scaling_tick().action == "up" and gs.target_instances == 2
    gs.update_load(idle("a"))  # the load went away; the instance asked for never registers
    now[0] = 10.0
    assert gs.scaling_tick().action == "none"  # no drain while one is still starting
    now[0] = STARTUP_GRACE_S + 1
    gs.scaling_tick()
    assert gs.target_instances == 1
    assert any("never came" in str(d.reason) for d in gs.decisions)


def test_policy_knobs_are_validated_and_coerced():
    gs = make(idle("a"))
    assert gs.set_policy({"dispatch": "round_robin", "migration_enabled": "false"}).migration_enabled is False
    with pytest.raises(ValueError, match="unknown field"):
        gs.set_policy({"warp_speed": 9})
    with pytest.raises(ValueError, match="dispatch"):
        updated_policy(PolicyConfig(), {"dispatch": "fastest"})
    assert gs.explain(1, kind="policy")[0]["reason"].startswith("knobs changed")


def test_unregister_forgets_the_instance_and_its_requests():
    gs = make(idle("a"), idle("b"))
    rid = gs.dispatch(RequestLoad("r", 1)).instance_id
    gs.unregister(rid)
    assert "r" not in gs.request_locations and rid not in gs.instances
    assert [c for _, c in gs.snapshot()["instance_count"]] == [1, 2, 1]


def test_snapshot_is_plain_data_with_latency_per_priority():
    gs = make(idle("a"))
    for i, (prio, ttft) in enumerate([(0, 0.1), (0, 0.3), (1, 0.05)]):
        gs.request_finished(FinishedRequest(f"r{i}", prio, 1.0, ttft, 0.01, 0.5, 8, 0, "length", 0.2))
    snap = gs.snapshot()
    assert snap["latency"]["normal"]["ttft"]["count"] == 2
    assert snap["latency"]["high"]["ttft"]["mean"] == pytest.approx(0.05)
    assert snap["latency"]["all"]["slo_attainment"] == pytest.approx(2 / 3)
    assert snap["instances"][0]["freeness"] == 100.0 and snap["policy"]["dispatch"] == "llumnix"
    import msgpack

    msgpack.packb(snap, default=lambda o: math.nan)  # plain values only: travels over any comm


def test_percentile_interpolates():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([], 99) is None


def test_slo_attainment_uses_the_policy_targets_for_requests_without_their_own():
    gs = make(idle("a"), ttft_slo_s=0.2)
    gs.request_finished(FinishedRequest("r1", 0, 1.0, 0.1, 0.01, 0.5))
    gs.request_finished(FinishedRequest("r2", 0, 1.0, 0.3, 0.01, 0.5))
    assert gs.snapshot()["latency"]["normal"]["slo_attainment"] == 0.5
    assert gs.snapshot()["latency"]["high"]["slo_attainment"] is None


@pytest.mark.parametrize("seed", range(5))
def test_shortlisted_dispatch_decides_exactly_as_the_full_policy(seed):
    import random

    from llumnix_dask.policy import dispatch as dispatch_policy

    rng = random.Random(seed)
    loads = []
    for i in range(40):
        used = rng.choice([0, 0, 10, 40, 80, 95])  # ties and busy instances on purpose
        loads.append(InstanceLoad(f"i{i}", 100, used, num_running=rng.randint(0, 4), running_blocks=used,
                                  num_high_priority=rng.randint(0, 1)))
    for dispatch in ("llumnix", "infaas"):
        gs = make(*loads, dispatch=dispatch)
        if seed % 2:
            gs.drain("i3", "test")
        for k in range(60):
            req = RequestLoad(f"r{k}", rng.randint(1, 30), priority=k % 5 == 0)
            expected = dispatch_policy.choose_instance(gs.loads(), req, gs.policy, gs.dispatch_state).instance_id
            assert gs.dispatch(req).instance_id == expected
