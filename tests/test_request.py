import pytest

from llumnix_dask.request import InvalidTransition, Priority, Request, RequestStatus, SamplingParams


def test_transitions_record_events_and_preemptions():
    r = Request.new([1, 2, 3], SamplingParams(max_tokens=2), request_id="r", arrival_time=1.0)
    r.transition(RequestStatus.RUNNING, 2.0)
    r.transition(RequestStatus.WAITING, 3.0, "preempted")
    assert r.num_preemptions == 1
    r.transition(RequestStatus.RUNNING, 4.0)
    r.append_token(5, 4.5)
    r.append_token(6, 5.5)
    r.transition(RequestStatus.FINISHED, 5.5)
    assert [e.status for e in r.events][-1] is RequestStatus.FINISHED
    assert r.ttft == pytest.approx(3.5) and r.tpot == pytest.approx(1.0) and r.e2e == pytest.approx(4.5)
    with pytest.raises(InvalidTransition):
        r.transition(RequestStatus.RUNNING, 6.0)


def test_bad_request_inputs():
    with pytest.raises(ValueError, match="prompt"):
        Request.new([])
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="priority"):
        Priority.parse("urgent")
    assert Priority.parse("high") is Priority.HIGH and Priority.parse(0) is Priority.NORMAL
