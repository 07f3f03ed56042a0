"""``finish_ahead``: batches finished in a worker thread, in order, ahead of the caller; errors raised where the
batch is asked for; no thread left behind. (The trainer uses it for ``data.decode: device``: see also
tests/test_device_decode.py, whose equality and resume tests run through it, and tests/test_cuda.py.)"""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit.data.ahead import finish_ahead
from maskkit.errors import UnreadableImageError

THREAD = "maskkit-finish-ahead"


def _alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD)]


@settings(max_examples=40, deadline=None)
@given(items=st.lists(st.integers(-1000, 1000), max_size=20), depth=st.integers(0, 4))
def test_the_results_are_the_inline_results_in_order(items: list[int], depth: int) -> None:
    got = list(finish_ahead(items, lambda x: (x, x * x), "cpu", depth=depth))
    assert got == [(x, x * x) for x in items]
    assert not _alive()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_the_next_items_are_finished_while_the_caller_holds_one(depth: int) -> None:
    """When the caller receives item k, the worker has started item k+1 (it cannot have, inline): the caller
    waits for that start with a timeout, which only expires when nothing runs ahead."""
    n = 6
    started = [threading.Event() for _ in range(n)]
    pulled: list[int] = []
    threads: set[str] = set()

    def source():
        for k in range(n):
            pulled.append(k)
            yield k

    def finish(k: int) -> int:
        threads.add(threading.current_thread().name)
        started[k].set()
        return k

    for k in finish_ahead(source(), finish, "cpu", depth=depth):
        if k == 0:  # the caller pulled depth + 1 items before the first came back
            assert len(pulled) == depth + 1
        if k + 1 < n:
            assert started[k + 1].wait(5), f"item {k + 1} was not started while the caller held item {k}"
    assert threads and all(name.startswith(THREAD) for name in threads)


def test_inline_finishes_nothing_ahead() -> None:
    started = [threading.Event() for _ in range(3)]

    def finish(k: int) -> int:
        assert threading.current_thread() is threading.main_thread()
        started[k].set()
        return k

    for k in finish_ahead(range(3), finish, "cpu", depth=0):
        assert not any(e.is_set() for e in started[k + 1:])


def test_an_error_finishing_a_batch_is_raised_when_that_batch_is_asked_for() -> None:
    def finish(k: int) -> int:
        if k == 3:
            raise UnreadableImageError("/data/train/3.jpg", "Image is incomplete or truncated")
        return k

    got = []
    with pytest.raises(UnreadableImageError, match=r"3\.jpg.*incomplete") as raised:
        for k in finish_ahead(range(8), finish, "cpu", depth=2):
            got.append(k)
    assert got == [0, 1, 2] and raised.value.path == "/data/train/3.jpg"
    assert not _alive()


def test_an_error_of_the_source_is_raised_after_the_items_before_it() -> None:
    def source():
        yield from range(4)
        raise OSError("loader worker 1 died")

    got = []
    with pytest.raises(OSError, match="worker 1 died"):
        for k in finish_ahead(source(), lambda k: k, "cpu", depth=3):
            got.append(k)
    assert got == [0, 1, 2, 3] and not _alive()  # as inline: the items before the error are handed over


def test_closing_early_cancels_the_queue_and_leaves_no_thread() -> None:
    finished: list[int] = []
    second_started, gate = threading.Event(), threading.Event()

    def finish(k: int) -> int:
        if k == 1:
            second_started.set()
            gate.wait(5)  # item 1 is being finished when the caller closes; 2 and 3 are queued
        finished.append(k)
        return k

    batches = finish_ahead(range(100), finish, "cpu", depth=3)
    assert next(batches) == 0 and second_started.wait(5)
    threading.Timer(0.2, gate.set).start()
    batches.close()  # waits for item 1, cancels the queued ones
    assert finished == [0, 1] and not _alive()


def test_a_negative_depth_is_refused() -> None:
    with pytest.raises(ValueError, match="depth: expected >= 0, got -1"):
        next(finish_ahead([1], lambda k: k, "cpu", depth=-1))
