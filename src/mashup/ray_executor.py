"""``RayExecutor``: units fanned out over Ray actors, one worker (one model load) per actor.

Ray starts locally unless ``address`` names a cluster (``ray://host:10001`` or ``auto``). With GPUs
there is one actor per GPU; otherwise one per ``cpus_per_worker`` CPUs. The driver schedules units
on idle actors and collects results in its own process, so whatever records them (the score cache)
has a single writer. An actor that dies (killed, out of memory, node lost) is replaced by a fresh
one and its unit is run again. Ray is an optional extra: ``pip install mashup[ray]``.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mashup
from mashup.errors import MashupError
from mashup.executors import ResultFn, UnitFailed, WorkerFactory

logger = logging.getLogger(__name__)


def require_ray() -> Any:
    """The ray module, or one line on how to install it."""
    try:
        import ray
    except ImportError:
        raise MashupError("--executor ray needs Ray, which is not installed", None,
                          "pip install 'mashup[ray]' (or use --executor local)") from None
    return ray


class _Actor:
    """Holds one worker built from the factory; Ray wraps this class as a remote actor."""

    def __init__(self, factory: WorkerFactory) -> None:
        self.worker = factory()

    def setup(self, factory: WorkerFactory) -> None:
        """Build the next worker in this (already started) process: no new process, no re-imports."""
        self.worker = None
        self.worker = factory()

    def run(self, unit: Any) -> Any:
        return self.worker(unit)

    def pid(self) -> int:
        return os.getpid()


class RayExecutor:
    """Executor over Ray actors; see the module docstring."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, retries: int = 2,
                 cpus_per_worker: int = 1) -> None:
        ray = require_ray()
        self._ray = ray
        self.retries = retries
        self.retried = 0
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=address, runtime_env=_runtime_env(), include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self._options: dict[str, Any] = {"num_gpus": 1} if gpus else {"num_cpus": cpus_per_worker}
        self.worker_device = "cuda" if gpus else "cpu"
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = workers or (gpus if gpus else max(1, cpus // cpus_per_worker))
        self._remote = ray.remote(_Actor)
        self._factory: WorkerFactory | None = None
        self.actors: list[Any] = []

    def _actors_for(self, factory: WorkerFactory) -> list[Any]:
        """The actors with workers from ``factory``: started once, given a new worker when the factory changes."""
        if self._factory is factory:
            return self.actors
        self._factory = factory
        if not self.actors:
            self.actors = [self._new_actor() for _ in range(self.workers)]
            return self.actors
        refs = [actor.setup.remote(factory) for actor in self.actors]
        for slot, ref in enumerate(refs):
            try:
                self._ray.get(ref)
            except self._ray.exceptions.RayActorError:
                self.actors[slot] = self._new_actor()
        return self.actors

    def _new_actor(self) -> Any:
        assert self._factory is not None
        return self._remote.options(**self._options).remote(self._factory)

    def map(self, factory: WorkerFactory, units: Sequence[Any], *, on_result: ResultFn | None = None) -> list[Any]:
        ray = self._ray
        actors = self._actors_for(factory)
        queue: deque[int] = deque(range(len(units)))
        idle = list(range(len(actors)))
        pending: dict[Any, tuple[int, int]] = {}  # object ref -> (unit, actor slot)
        attempts = [0] * len(units)
        results: list[Any] = [None] * len(units)
        while queue or pending:
            while queue and idle:
                index, slot = queue.popleft(), idle.pop()
                pending[self.actors[slot].run.remote(units[index])] = (index, slot)
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            index, slot = pending.pop(ref)
            try:
                results[index] = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # the process is gone: replace it
                self._retry(index, attempts, exc)
                self.actors[slot] = self._new_actor()
                queue.appendleft(index)
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, MashupError):
                    raise cause from None
                self._retry(index, attempts, cause or exc)
                queue.appendleft(index)
            else:
                if on_result:
                    on_result(index, results[index])
            idle.append(slot)
        return results

    def _retry(self, index: int, attempts: list[int], exc: BaseException) -> None:
        attempts[index] += 1
        if attempts[index] > self.retries:
            what = f"unit {index} failed {attempts[index]} time(s): {type(exc).__name__}: {exc}".splitlines()[0]
            raise UnitFailed(what, None, "see the Ray logs (/tmp/ray/session_latest/logs)")
        logger.warning("unit %d failed (%s); running it again", index, type(exc).__name__)
        self.retried += 1

    def _kill_actors(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []

    def close(self) -> None:
        self._kill_actors()
        self._factory = None
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _runtime_env() -> dict[str, Any]:
    """Ship this mashup package to the workers when it is not installed where they would find it."""
    package_dir = Path(mashup.__file__).parent
    return {"py_modules": [str(package_dir)], "env_vars": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}}
