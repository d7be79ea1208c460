import math

import pytest

from llumnix_dask.config import PolicyConfig
from llumnix_dask.policy.load import InstanceLoad, RequestLoad, freeness, virtual_usage, with_dispatched
from llumnix_dask.request import Priority


def test_empty_instance_is_all_free():
    load = InstanceLoad("i0", total_blocks=1000, used_blocks=0)
    assert virtual_usage(load, PolicyConfig()) == 0
    assert freeness(load, PolicyConfig()) == 1000


def test_running_and_queued_hol_demand():
    load = InstanceLoad.from_requests(
        "i0", 100, 30, running=(RequestLoad("a", 10), RequestLoad("b", 20)), waiting=(RequestLoad("c", 40), RequestLoad("d", 8))
    )
    # Only the head-of-line request's demand counts; the one behind it adds to B.
    assert virtual_usage(load, PolicyConfig()) == 70
    assert freeness(load, PolicyConfig()) == pytest.approx(7.5)
    # Without de-fragmentation the queue is invisible in usage: the instance looks much freer.
    assert freeness(load, PolicyConfig(defragmentation=False)) == pytest.approx(70 / 4)


def test_high_priority_headroom_and_terminating():
    hp = RequestLoad("h", 10, priority=Priority.HIGH)
    load = InstanceLoad.from_requests("i0", 1000, 10, running=(hp,))
    cfg = PolicyConfig(priority_headroom_blocks=300)
    assert virtual_usage(load, cfg) == 310
    assert virtual_usage(load, PolicyConfig(priorities_enabled=False)) == 10
    term = InstanceLoad("i1", 1000, 0, terminating=True)
    assert math.isinf(virtual_usage(term, cfg)) and freeness(term, cfg) == -math.inf


def test_with_dispatched_lowers_freeness():
    load = InstanceLoad("i0", 100, 0)
    after = with_dispatched(load, RequestLoad("x", 20))
    assert freeness(after, PolicyConfig()) == 80 and freeness(load, PolicyConfig()) == 100


def test_the_papers_headroom_makes_an_instance_with_high_priority_requests_look_its_target_size():
    cfg = PolicyConfig(priority_instance_blocks=100)
    normal = InstanceLoad.from_requests("a", 785, 60, running=(RequestLoad("n", 60),))
    with_high = InstanceLoad.from_requests("b", 785, 60, running=(RequestLoad("h", 30, priority=Priority.HIGH),
                                                                  RequestLoad("n", 30)))
    assert freeness(normal, cfg) == 725.0
    assert freeness(with_high, cfg) == (100 - 60) / 2  # once per instance, however many high-priority requests
    assert freeness(with_high, PolicyConfig(priority_instance_blocks=100, priorities_enabled=False)) == (785 - 60) / 2
