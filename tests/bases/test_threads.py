"""rbd.bases.threads: the pool that draws directions in parallel. Results come back in
order, from threads that run at once; creating it leaves the caller's thread count alone
(its threads' own count of 1 does not hold: an expected failure below); errors reach the
caller; a forked child gets a pool of its own."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
import torch

from rbd.bases.threads import ThreadPool, thread_pool


def test_results_come_back_in_the_order_of_the_calls():
    pool = ThreadPool(3)
    got = pool.map([lambda i=i: torch.full((2,), float(i * i)) for i in range(3)])
    assert [t.tolist() for t in got] == [[0.0, 0.0], [1.0, 1.0], [4.0, 4.0]]
    # fewer calls than threads: one result per call
    assert [float(t) for t in pool.map([lambda: torch.tensor(7.0)])] == [7.0]


def test_the_calls_run_at_once_on_threads_of_their_own():
    n = 3
    meet = threading.Barrier(n)  # passes only when all n calls are running together

    def call():
        meet.wait(timeout=10)
        return threading.get_ident()

    idents = ThreadPool(n).map([call] * n)
    assert len(set(idents)) == n
    assert threading.get_ident() not in idents


def test_creating_a_pool_keeps_the_callers_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ThreadPool(2)
        assert torch.get_num_threads() == 2
        # a thread started afterwards gets the process's count, not the pool's 1
        seen = []
        later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        later.start()
        later.join()
        assert seen == [2]
    finally:
        torch.set_num_threads(before)


@pytest.mark.xfail(
    strict=True,
    reason="torch initialises a thread's intra-op count lazily, on its first parallel op or "
    "get_num_threads, from the process-wide count, which ThreadPool restores after its "
    "threads set 1: they run with the caller's count (fixing it may change float sums)",
)
def test_each_pool_thread_has_one_intra_op_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert ThreadPool(2).map([torch.get_num_threads] * 2) == [1, 1]
    finally:
        torch.set_num_threads(before)


def _map_within(pool, fns, seconds=30):
    """pool.map(fns), failing the test instead of waiting forever for a lost call."""
    box = {}

    def call():
        try:
            box["result"] = pool.map(fns)
        except BaseException as error:
            box["error"] = error

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=seconds)
    if caller.is_alive():
        pytest.fail(f"the pool did not answer within {seconds} s")
    if "error" in box:
        raise box["error"]
    return box["result"]


def test_an_error_in_a_call_reaches_the_caller_and_the_pool_goes_on():
    pool = ThreadPool(2)

    def fail():
        raise ValueError("bad seed")

    with pytest.raises(ValueError, match="bad seed"):
        _map_within(pool, [lambda: torch.ones(1), fail])
    again = _map_within(pool, [lambda: torch.ones(1), lambda: torch.zeros(1)])
    assert [float(t) for t in again] == [1.0, 0.0]


def test_one_pool_per_size_in_a_process():
    assert thread_pool(2) is thread_pool(2)
    assert thread_pool(3) is not thread_pool(2)


def _child_draws(queue):
    # The parent's pool has no threads in this process: using it would wait forever.
    queue.put([float(t) for t in thread_pool(2).map([lambda: torch.ones(1)] * 2)])


def test_a_forked_child_gets_a_pool_of_its_own():
    thread_pool(2).map([lambda: torch.ones(1)] * 2)  # the parent's pool, threads started
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_draws, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the forked child's pool never answered (it reused the parent's)")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == [1.0, 1.0]
