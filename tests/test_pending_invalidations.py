"""The queue of invalidations that could not reach the backend: a replay forgets only what it covered."""

from __future__ import annotations

from yokedcache.policy.pending import PendingInvalidations

BACKEND = "redis-a"


def test_a_replay_lands_what_it_was_taken_with() -> None:
    pending = PendingInvalidations(limit=10)
    pending.add(BACKEND, ["users", "posts"])
    replay = pending.snapshot(BACKEND)
    assert (replay.tags, replay.flush) == (("posts", "users"), False)
    pending.landed(BACKEND, replay)
    assert not pending
    assert BACKEND not in pending


def test_a_tag_queued_again_while_its_replay_was_on_its_way_stays_queued() -> None:
    pending = PendingInvalidations(limit=10)
    pending.add(BACKEND, ["users"])
    replay = pending.snapshot(BACKEND)  # the replay runs in the backend here...
    pending.add(BACKEND, ["users", "posts"])  # ...then a later write's invalidation fails and is queued
    pending.landed(BACKEND, replay)
    assert pending.snapshot(BACKEND).tags == ("posts", "users")  # the later write is still owed


def test_queueing_during_a_namespace_flush_keeps_the_flush_owed() -> None:
    pending = PendingInvalidations(limit=2)
    pending.add(BACKEND, ["a", "b", "c"])  # past the bound: a flush is owed instead
    replay = pending.snapshot(BACKEND)
    assert replay.flush
    pending.add(BACKEND, ["d"])  # a write after the flush ran
    pending.landed(BACKEND, replay)
    assert pending.snapshot(BACKEND).flush  # flushing again covers it
    pending.landed(BACKEND, pending.snapshot(BACKEND))
    assert not pending


def test_backends_are_landed_separately() -> None:
    pending = PendingInvalidations(limit=10)
    pending.add(BACKEND, ["users"])
    pending.add("redis-b", ["users"])
    pending.landed(BACKEND, pending.snapshot(BACKEND))
    assert BACKEND not in pending
    assert "redis-b" in pending
    assert pending.size() == 1
