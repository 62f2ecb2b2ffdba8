"""Where units of work run: here, one at a time (``LocalExecutor``), or fanned out over Ray actors.

An executor maps a *worker factory* over *units*. The factory is a picklable callable that builds a
worker once per process or actor (loading a model, say) and the worker is called on each unit; units
and results must pickle too. A worker may also have ``prefetch(unit)``, a hint that it will be called
on that unit soon: ``LocalExecutor`` gives it the next unit before running each one, so the worker can
read the next unit's inputs while it computes. Results come back in unit order; ``on_result`` sees
each one as it lands, in the calling process, so a single writer can record them. A unit that fails
is run again up to ``retries`` times (on a fresh worker when its process died); a ``MashupError`` is
the user's to fix and is raised at once. Selection scoring uses this today; any protocol whose units are
independent (e.g. the arms of an experiment) can use it as is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, get_args

from mashup.config import ExecutorName
from mashup.errors import MashupError

logger = logging.getLogger(__name__)

U = TypeVar("U")
R = TypeVar("R")
WorkerFactory = Callable[[], Callable[[Any], Any]]
ResultFn = Callable[[int, Any], None]
EXECUTOR_NAMES: tuple[str, ...] = get_args(ExecutorName)


class Executor(Protocol):
    """Runs units through workers built by a factory; see the module docstring for the contract."""

    name: str
    retried: int  # units run again after a failure, over this executor's life
    worker_device: str | None  # the device type workers score on ("cuda", "cpu"); None: the caller's own

    def map(self, factory: WorkerFactory, units: Sequence[Any], *, on_result: ResultFn | None = None) -> list[Any]:
        ...

    def close(self) -> None:
        ...


class UnitFailed(MashupError):
    """A unit kept failing after its retries."""


class LocalExecutor:
    """Units one at a time in this process; the worker is built once per factory and kept for later maps."""

    name = "local"
    worker_device = None  # the worker runs in this process, on its device

    def __init__(self, retries: int = 2) -> None:
        self.retries = retries
        self.retried = 0
        self._factory: WorkerFactory | None = None
        self._worker: Callable[[Any], Any] | None = None

    def _worker_for(self, factory: WorkerFactory) -> Callable[[Any], Any]:
        if self._factory is not factory or self._worker is None:
            self._worker = None  # drop the previous worker (and its model) before building the next
            self._worker, self._factory = factory(), factory
        return self._worker

    def map(self, factory: WorkerFactory, units: Sequence[Any], *, on_result: ResultFn | None = None) -> list[Any]:
        results = []
        for index, unit in enumerate(units):
            result = self._run(factory, unit, index, units[index + 1] if index + 1 < len(units) else None)
            results.append(result)
            if on_result:
                on_result(index, result)
        return results

    def _run(self, factory: WorkerFactory, unit: Any, index: int, upcoming: Any = None) -> Any:
        for attempt in range(self.retries + 1):
            try:
                worker = self._worker_for(factory)
                prefetch = getattr(worker, "prefetch", None)
                if prefetch is not None and upcoming is not None:  # this unit's reads first, then the next's
                    prefetch(unit)
                    prefetch(upcoming)
                return worker(unit)
            except MashupError:
                raise
            except Exception as exc:
                if attempt == self.retries:
                    raise UnitFailed(f"unit {index} failed {attempt + 1} time(s): {type(exc).__name__}: {exc}",
                                     None, "see the log for the traceback") from exc
                logger.warning("unit %d failed (%s); retrying with a fresh worker", index, exc)
                self.retried += 1
                self._worker = None
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._worker = self._factory = None

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_executor(name: ExecutorName, *, address: str | None = None, workers: int | None = None,
                  retries: int = 2) -> Executor:
    """``local`` or ``ray`` (Ray is an optional extra, imported only here)."""
    check_executor_name(name)
    if name == "local":
        return LocalExecutor(retries=retries)
    if name == "ray":
        from mashup.ray_executor import RayExecutor

        return RayExecutor(address=address, workers=workers, retries=retries)
    raise AssertionError(name)  # check_executor_name knows every name


def check_executor_name(name: str) -> None:
    """Refuse an unknown executor name before anything is planned or started (a dry run included)."""
    if name not in EXECUTOR_NAMES:
        raise MashupError(f"unknown executor '{name}'", None,
                          f"use {' or '.join(f'--executor {known}' for known in EXECUTOR_NAMES)}")
