"""How the experiment's units are run: the small interface the runner needs, and the local default.

The runner hands an executor a module-level function and a list of picklable jobs, and consumes the
results in order as they arrive, recording each as soon as it is yielded. A distributed executor (Ray,
a cluster queue) only has to provide the same ``map``: run ``fn`` on every item, anywhere, and yield the
results in the order of the items. The runner does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar

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
