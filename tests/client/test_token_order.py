"""Putting one request's token messages in order: gaps, duplicates, second copies, replays, dead senders."""

from __future__ import annotations

from llumnix_dask.client.token_order import TokenOrder, msg
from llumnix_dask.wire.frontend_api import TokenMessage


def tokens(accepted):
    return [t for c in accepted.chunks for t in c.token_ids]


def test_a_gap_holds_later_messages_and_reports_its_age():
    order = TokenOrder()
    assert tokens(order.accept(msg(0, [10], "a"), now=0.0)) == [10]
    assert tokens(order.accept(msg(2, [12], "b"), now=1.0)) == []  # index 1 never came (yet)
    assert order.gap_age(3.5) == 2.5 and order.newest_sender() == "b"
    # A replay from the holder fills the gap (text unknown: the frontend decodes it), then 12 follows.
    out = order.accept(TokenMessage("r", "b", 1, [11], None), now=4.0)
    assert tokens(out) == [11, 12] and out.chunks[0].text is None
    assert order.gap_age(10.0) == 0.0 and order.next_index == 3


def test_a_replay_that_overlaps_what_was_delivered_is_trimmed():
    order = TokenOrder()
    order.accept(msg(0, [10, 11], "a"), now=0.0)
    out = order.accept(TokenMessage("r", "a", 0, [10, 11, 12, 13], None, True, "length"), now=1.0)
    assert tokens(out) == [12, 13] and out.chunks[-1].finished and order.finish_reason == "length"


def test_messages_of_an_ignored_instance_no_longer_count():
    order = TokenOrder()
    order.accept(msg(0, [10], "a"), now=0.0)
    order.accept(msg(2, [12], "a"), now=0.0)  # pending behind a gap
    order.ignore("a")  # it died: the request continues elsewhere from index 1
    assert order.pending == {} and order.gap_age(5.0) == 0.0
    assert tokens(order.accept(msg(1, [11], "a"), now=1.0)) == []
    assert tokens(order.accept(msg(1, [11, 12], "c"), now=1.0)) == [11, 12]
    assert order.instances == ["a", "c"]


def test_a_second_live_copy_is_named_once_and_the_later_one_stops():
    order = TokenOrder()
    order.accept(msg(0, [10], "a"), now=0.0)
    order.accept(msg(1, [11, 12], "b"), now=0.0)  # migrated to b
    out = order.accept(msg(1, [11], "a"), now=0.0)  # a resumed its copy: two copies run
    assert out.stop_copy == ("b", "a")
    assert order.accept(msg(1, [11], "a"), now=0.0).stop_copy is None  # settled
    assert tokens(order.accept(msg(3, [13], "b"), now=0.0)) == []  # the stopped copy is ignored
    assert tokens(order.accept(msg(3, [13], "a", done=True), now=0.0)) == [13] and order.finished
