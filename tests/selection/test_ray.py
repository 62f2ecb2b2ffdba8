"""The Ray executor on a local Ray started by the test (skipped when Ray is not installed)."""

import pytest

ray = pytest.importorskip("ray")

from mashup.config import SelectConfig  # noqa: E402
from mashup.executors import LocalExecutor  # noqa: E402
from mashup.ray_executor import RayExecutor  # noqa: E402
from mashup.selection import select_checkpoints  # noqa: E402
from tests.selection.helpers import records_for, requests_for  # noqa: E402
from tests.tiny import save_tiny_lora  # noqa: E402


@pytest.fixture(scope="module")
def ray_executor():
    executor = RayExecutor(workers=2)
    yield executor
    executor.close()


@pytest.fixture(scope="module")
def library_records(tmp_path_factory, tiny_base, tiny_loras):
    root = tmp_path_factory.mktemp("ray-loras")
    extra = [save_tiny_lora(tiny_base, root / f"x{i}", seed=30 + i) for i in range(5)]
    return records_for([*tiny_loras, *extra])


def _select(tiny_base, mc_file, records, executor, selector="halving", progress=None):
    workspace, requests = requests_for(tiny_base, mc_file, 16, "cloze")
    config = SelectConfig(samples=16, k=2, selector=selector, batch_size=8, cache=False, adapters_per_forward=1,
                          halving={"min_samples": 4, "factor": 2, "min_survivors": 2})
    return select_checkpoints(workspace, records, requests, config, None, executor=executor, progress=progress)


@pytest.mark.parametrize("selector", ["exhaustive", "halving"])
def test_ray_ranks_like_local(tiny_base, mc_file, library_records, ray_executor, selector):
    local = _select(tiny_base, mc_file, library_records, LocalExecutor(), selector)
    fanned = _select(tiny_base, mc_file, library_records, ray_executor, selector)
    assert [s.id for s in fanned.ranking] == [s.id for s in local.ranking]
    assert [s.loss for s in fanned.ranking] == pytest.approx([s.loss for s in local.ranking], abs=1e-6)
    assert fanned.stats.executor == "ray" and fanned.stats.forward_tokens == local.stats.forward_tokens


def test_killing_an_actor_mid_selection_retries_its_unit(tiny_base, mc_file, library_records, ray_executor):
    local = _select(tiny_base, mc_file, library_records, LocalExecutor(), "exhaustive")
    killed = []

    def kill_one(done, planned):
        if done and not killed:
            victim = ray_executor.actors[0]
            pid = ray.get(victim.pid.remote())
            ray.kill(victim)
            killed.append(pid)

    fanned = _select(tiny_base, mc_file, library_records, ray_executor, "exhaustive", progress=kill_one)
    assert killed, "an actor was killed while units were left"
    assert fanned.stats.retried_units >= 1
    assert [s.id for s in fanned.ranking] == [s.id for s in local.ranking]
    assert len(fanned.ranking) == len(library_records)
    pids = {ray.get(a.pid.remote()) for a in ray_executor.actors}
    assert killed[0] not in pids, "the dead actor was replaced"
