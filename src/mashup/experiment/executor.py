"""How the experiment's units are run: the small interface the runner needs, and the local default.

The runner hands an executor a module-level function and a list of picklable jobs, and consumes the
results in order as they arrive, recording each as soon as it is yielded. A distributed executor (Ray,
a cluster queue) only has to provide the same ``map``: run ``fn`` on every item, anywhere, and yield the
results in the order of the items. The runner does not change: ``PooledExecutor`` puts any
``mashup.executors.Executor`` (the one selection fans out on, Ray included) behind this ``map``.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from mashup import executors

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs independent units of work; ``fn`` and the items are picklable, the results come back in order."""

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        """Yield ``fn(item)`` for every item, in the order of ``items``; an exception stops the iteration."""
        ...


class LocalExecutor:
    """One unit at a time in this process: the default, and what makes a run reproducible on one machine."""

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        for item in items:
            yield fn(item)


def _returning(fn: Callable[[T], R]) -> Callable[[T], R]:
    """A worker factory whose worker is ``fn`` itself (module-level, so it pickles)."""
    return fn


class PooledExecutor:
    """Any ``mashup.executors.Executor`` (Ray actors, ...) behind this module's ``map``.

    The pool runs units in parallel and reports each as it lands; this yields them in the order of the
    items as soon as each one and all before it are done, so the runner records every unit it can while
    the rest still run. The pool's own ``map`` runs in a thread here, because the runner pulls results.
    """

    def __init__(self, make_pool: Callable[[], executors.Executor]) -> None:
        self._make_pool = make_pool
        self._pool: executors.Executor | None = None

    @property
    def pool(self) -> executors.Executor:
        """The pool, started at the first ``map``: a run's checks come first, then Ray (a cluster, actors)."""
        if self._pool is None:
            self._pool = self._make_pool()
        return self._pool

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        landed: queue.Queue[tuple[int, Any]] = queue.Queue()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.pool.map(functools.partial(_returning, fn), list(items),
                              on_result=lambda index, result: landed.put((index, result)))
            except BaseException as exc:  # handed to the consuming thread, which raises it
                failure.append(exc)
            landed.put((-1, None))

        thread = threading.Thread(target=run, name="experiment-pool", daemon=True)
        thread.start()
        ready: dict[int, Any] = {}
        for next_index in range(len(items)):
            while next_index not in ready:
                index, result = landed.get()
                if index < 0:
                    thread.join()
                    raise failure[0] if failure else RuntimeError("the executor stopped before every unit ran")
                ready[index] = result
            yield ready.pop(next_index)
        thread.join()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


def make_experiment_executor(name: str, *, address: str | None = None) -> Executor:
    """``local`` (one unit at a time here) or ``ray`` (units fanned out over Ray actors)."""
    executors.check_executor_name(name)
    if name == "local":
        return LocalExecutor()
    from mashup.ray_executor import require_ray

    require_ray()  # not installed: said now, before a run writes anything
    return PooledExecutor(functools.partial(executors.make_executor, name, address=address))
