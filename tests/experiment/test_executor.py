"""The experiment's executor adapter: any selection-style pool (Ray's included) behind the runner's map."""

from __future__ import annotations

import threading

import pytest

from mashup import executors
from mashup.executors import LocalExecutor as PoolLocalExecutor
from mashup.experiment.executor import PooledExecutor, make_experiment_executor


def _square(x: int) -> int:
    return x * x


class ReversedPool:
    """Lands the results last unit first, as parallel workers may; fails on a chosen unit."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.fail_on, self.closed = fail_on, False
        self.started = threading.Event()

    def map(self, factory, units, *, on_result=None):
        worker = factory()
        results = [None] * len(units)
        for index in reversed(range(len(units))):
            if index == self.fail_on:
                raise RuntimeError(f"unit {index} broke")
            results[index] = worker(units[index])
            on_result(index, results[index])
        return results

    def close(self) -> None:
        self.closed = True


def test_results_come_back_in_item_order_whatever_order_they_land_in():
    assert list(PooledExecutor(ReversedPool).map(_square, [1, 2, 3, 4])) == [1, 4, 9, 16]


def test_units_finished_before_a_failure_are_yielded_then_the_failure_is_raised():
    results = PooledExecutor(lambda: ReversedPool(fail_on=1)).map(_square, [1, 2, 3, 4])
    with pytest.raises(RuntimeError, match="unit 1 broke"):
        next(results)  # unit 0 never landed: the failure is what the runner sees first


def test_the_selection_pool_runs_experiment_jobs_unchanged():
    pooled = PooledExecutor(PoolLocalExecutor)
    assert list(pooled.map(_square, range(5))) == [0, 1, 4, 9, 16]
    pooled.close()


def test_local_is_the_runners_own_executor_and_unknown_names_fail_clearly():
    assert type(make_experiment_executor("local")).__name__ == "LocalExecutor"
    with pytest.raises(Exception, match="unknown executor 'slurm'"):
        make_experiment_executor("slurm")


def test_a_pooled_executor_starts_its_pool_at_the_first_map_only():
    """So an experiment's checks (an occupied out dir, a missing library) fail before Ray starts a cluster."""
    made: list[ReversedPool] = []
    pooled = PooledExecutor(lambda: made.append(ReversedPool()) or made[-1])
    pooled.close()  # never used: nothing was started, nothing to close
    assert made == []
    assert list(pooled.map(_square, [2, 3])) == [4, 9] and len(made) == 1
    pooled.close()
    assert made[0].closed


def test_making_the_ray_executor_starts_no_ray(monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setattr(executors, "make_executor", lambda *args, **kwargs: pytest.fail("Ray started before a unit"))
    runner = make_experiment_executor("ray")  # Ray comes up with the first unit, after the run's own checks
    runner.close()
