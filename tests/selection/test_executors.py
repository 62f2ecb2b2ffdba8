import sys
from dataclasses import dataclass, field

import pytest

from mashup.errors import DataError, MashupError
from mashup.executors import LocalExecutor, UnitFailed, make_executor


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
