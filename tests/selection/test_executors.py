import sys
from dataclasses import dataclass, field

import pytest

import mashup.selection.engine as engine
from mashup.config import SelectConfig
from mashup.errors import DataError, MashupError
from mashup.executors import LocalExecutor, UnitFailed, make_executor
from mashup.selection import select_checkpoints
from tests.selection.helpers import records_for, requests_for
from tests.tiny import save_tiny_lora


@dataclass(eq=False)
class Flaky:
    """Builds workers that fail on the units named in ``fail_once`` the first time they see them."""

    fail_once: set = field(default_factory=set)
    builds: int = 0

    def __call__(self):
        self.builds += 1

        def work(unit):
            if unit == "bad":
                raise DataError("bad unit", "here", "fix it")
            if unit in self.fail_once:
                self.fail_once.discard(unit)
                raise RuntimeError(f"transient failure on {unit}")
            return unit * 2
        return work


def test_local_executor_returns_in_order_and_builds_the_worker_once():
    factory = Flaky()
    seen = []
    with LocalExecutor() as executor:
        assert executor.map(factory, [1, 2, 3], on_result=lambda i, r: seen.append((i, r))) == [2, 4, 6]
        assert executor.map(factory, [4]) == [8]
    assert seen == [(0, 2), (1, 4), (2, 6)]
    assert factory.builds == 1, "one worker (one model load) for every map with the same factory"


def test_local_executor_retries_a_failed_unit_on_a_fresh_worker():
    factory = Flaky(fail_once={2})
    executor = LocalExecutor(retries=1)
    assert executor.map(factory, [1, 2, 3]) == [2, 4, 6]
    assert executor.retried == 1 and factory.builds == 2


def test_local_executor_gives_up_after_its_retries_and_never_retries_user_errors():
    with pytest.raises(UnitFailed, match="unit 0 failed 1 time"):
        LocalExecutor(retries=0).map(Flaky(fail_once={5}), [5])
    executor = LocalExecutor(retries=3)
    with pytest.raises(DataError, match="bad unit"):
        executor.map(Flaky(), ["bad"])
    assert executor.retried == 0


def test_unknown_executor_is_one_clear_error():
    with pytest.raises(MashupError, match="use --executor local or --executor ray"):
        make_executor("dask")  # type: ignore[arg-type]


def test_ray_executor_without_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(MashupError, match=r"pip install 'mashup\[ray\]'"):
        make_executor("ray")


class SizeNotingExecutor(LocalExecutor):
    """Runs here and notes each unit's size; ``worker_device`` set, it says its workers score there, as GPU
    actors behind a CPU driver do."""

    def __init__(self, worker_device: str | None) -> None:
        super().__init__()
        self.name = "local" if worker_device is None else "remote-like"
        self.worker_device = worker_device
        self.unit_sizes: list[int] = []

    def map(self, factory, units, *, on_result=None):
        self.unit_sizes += [len(unit.records) for unit in units]
        return super().map(factory, units, on_result=on_result)


@pytest.mark.parametrize(("worker_device", "sizes"), [(None, [2, 2, 2, 1]), ("cpu", [2, 2, 2, 1]), ("cuda", [7])])
def test_units_are_sized_for_the_workers_device(tiny_base, tiny_loras, mc_file, tmp_path, monkeypatch, worker_device,
                                                sizes):
    monkeypatch.setattr(engine, "GROUP_ROWS", 16)  # 2 adapters x 8 rows per forward on a CPU
    monkeypatch.setattr(engine, "CUDA_GROUP_ROWS", 64)  # 8 on a GPU
    extra = [save_tiny_lora(tiny_base, tmp_path / f"x{i}", seed=40 + i) for i in range(7 - len(tiny_loras))]
    workspace, requests = requests_for(tiny_base, mc_file, 8, "cloze")
    executor = SizeNotingExecutor(worker_device)
    config = SelectConfig(samples=8, k=2, batch_size=8, cache=False)
    selection = select_checkpoints(workspace, records_for([*tiny_loras, *extra]), requests, config, None,
                                   executor=executor)
    assert len(selection.ranking) == 7
    assert executor.unit_sizes == sizes
