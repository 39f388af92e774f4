"""The threads that draw directions in parallel, one pool per size and process."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from queue import SimpleQueue
from typing import TypeVar

import torch

T = TypeVar("T")


class ThreadPool:
    """Threads for drawing directions, each with torch's intra-op thread count
    set to 1 so that n threads keep n cores busy without oversubscription
    (nested OpenMP teams stall badly when the cores are shared)."""

    def __init__(self, n: int):
        self.queues: list[SimpleQueue] = [SimpleQueue() for _ in range(n)]
        ready = threading.Barrier(n + 1)
        threads = torch.get_num_threads()
        for q in self.queues:
            threading.Thread(
                target=self._serve, args=(q, ready), daemon=True, name="rbd-projection"
            ).start()
        ready.wait()
        # torch.set_num_threads in a thread sets that thread's count and a
        # process-wide default for threads started later; restore the latter.
        torch.set_num_threads(threads)

    @staticmethod
    def _serve(q: SimpleQueue, ready: threading.Barrier) -> None:
        torch.set_num_threads(1)
        ready.wait()
        while True:
            fn, future = q.get()
            try:
                future.set_result(fn())
            except BaseException as error:  # handed to the caller
                future.set_exception(error)

    def map(self, fns: list[Callable[[], T]]) -> list[T]:
        futures: list[Future[T]] = []
        for q, fn in zip(self.queues, fns, strict=False):
            futures.append(Future())
            q.put((fn, futures[-1]))
        return [f.result() for f in futures]


_POOLS: dict[tuple[int, int], ThreadPool] = {}


_POOLS_LOCK = threading.Lock()


def thread_pool(n: int) -> ThreadPool:
    # Keyed by process id too: a forked child has none of its parent's threads.
    key = (os.getpid(), n)
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = ThreadPool(n)
        return _POOLS[key]
