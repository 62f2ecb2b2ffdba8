"""A given library's candidates are those every merge of the experiment accepts: the arms' and the grid's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mashup.config import DataConfig, MergeConfig
from mashup.experiment import plan_experiment, run_experiment
from mashup.experiment.jobs import SelectJob, execute_job
from mashup.experiment.plan import Context, Unit, resolve
from mashup.experiment.report import current_records
from mashup.experiment.store import ResultStore
from mashup.library import CheckpointRecord, Library
from tests.experiment.helpers import tiny_config, write_tasks
from tests.tiny import save_fresh_init
from tests.tiny import save_tiny_lora

SELECTION = "select/alpha/samples:8"
# SelectJob keys computed at 6e3f9cc, before SelectJob had ``merges``: records written then must stay valid
DEFAULT_KEYS = {("a1", "b2"): "bd5809183e4a1905657554935723a798371ca3d9ab1abf4a96d8f144a8a22cf6",
                None: "7b6a2ca0a6fcf125548c09aad7c193f848f8dda2c1313761a4ce689cf490d1c6"}


def _library(tmp_path: Path, adapters: list[Path], references: list[str]) -> tuple[Library, CheckpointRecord]:
    """The adapters as sources of tasks no target has; the last one's init reference is the odd one out."""
    library = Library(tmp_path / "lib")
    records = [library.add([path], task=f"source{i}", init_reference=reference)[0]
               for i, (path, reference) in enumerate(zip(adapters, references))]
    return library, records[-1]


def _config(tmp_path: Path, tiny_base: Path, library: Library, **overrides: Any):
    """One target (alpha), one seed, one learning rate, no sweeps unless asked."""
    settings: dict[str, Any] = dict(library=str(library.directory), seeds=1, lrs=[1e-3], samples_sweep=[],
                                    merge_grid=None, arms=["scratch", "mashup_loss", "oracle"])
    settings.update(overrides)
    return tiny_config(tiny_base, write_tasks(tmp_path)[:1], tmp_path / "out", **settings)


def _oracle_merges(config) -> int:
    """C(candidates, k): the plan's count of a target's candidates, seen through its oracle merges."""
    return sum(p.unit.id.startswith("merge/alpha/oracle:") for p in plan_experiment(config))


def test_a_ties_experiment_ranks_only_checkpoints_ties_can_merge(tmp_path, tiny_base, tiny_loras):
    # non-zero B inits: in delta mode (ties' default) the reference is the init's ΔW, so two inits differ
    references = [str(save_tiny_lora(tiny_base, tmp_path / f"init{seed}", seed=seed)) for seed in (20, 20, 21)]
    library, outsider = _library(tmp_path, tiny_loras, references)
    config = _config(tmp_path, tiny_base, library, k=2, merge_method="ties", arms=["scratch", "oracle"])
    run_experiment(config)  # every oracle merge of k=2 among all three would pair the outsider with another
    records = current_records(ResultStore(config.out), config)
    selection = records[SELECTION]["result"]
    assert sorted(s["id"] for s in selection["ranking"]) == sorted(r.id for r in library.list() if r.id != outsider.id)
    assert "init reference" in next(r["reason"] for r in selection["rejected"] if r["id"] == outsider.id)
    assert [u for u in records if u.startswith("merge/alpha/oracle:")] == ["merge/alpha/oracle:0"]


def test_a_grid_method_that_merges_task_vectors_narrows_the_candidates(tmp_path, tiny_base, tiny_loras):
    # fresh PEFT inits (B = 0): one reference in delta mode, two digests in ab mode (task_arithmetic's default)
    references = [save_fresh_init(tiny_base, tmp_path / f"init{seed}.safetensors", seed=seed) for seed in (0, 0, 1)]
    library, outsider = _library(tmp_path, tiny_loras, references)
    config = _config(tmp_path, tiny_base, library, merge_grid={"methods": ["average", "task_arithmetic"], "k": [1]})
    assert _oracle_merges(config) == 2
    assert _oracle_merges(_config(tmp_path, tiny_base, library, merge_grid={"methods": ["ties"], "k": [1]})) == 3
    context = Context(config=config, root=str(tmp_path / "out"), precision="fp32", library=str(library.directory))
    result = execute_job(resolve(Unit("selection", "select", "alpha", "samples:8"), context))["result"]
    assert outsider.id not in {s["id"] for s in result["ranking"]} and len(result["ranking"]) == 2
    assert "task_arithmetic" in next(r["reason"] for r in result["rejected"] if r["id"] == outsider.id)


def test_a_selection_job_finds_its_candidates_once_and_scores_exactly_those(tmp_path, tiny_base, tiny_loras,
                                                                          monkeypatch):
    """Under the one default merge, one pass of the candidate filter (each candidate's freshness checked once):
    the scoring takes the candidates found, rather than finding them again."""
    library, _ = _library(tmp_path, tiny_loras, [None] * 3)
    context = Context(config=_config(tmp_path, tiny_base, library), root=str(tmp_path / "out"), precision="fp32",
                      library=str(library.directory))
    checked: list[list[str]] = []
    fresh = Library.fresh
    monkeypatch.setattr(Library, "fresh", lambda self, records, **kw: checked.append([r.id for r in records])
                        or fresh(self, records, **kw))
    result = execute_job(resolve(Unit("selection", "select", "alpha", "samples:8"), context))["result"]
    assert checked == [[r.id for r in library.list()]]
    assert sorted(s["id"] for s in result["ranking"]) == sorted(checked[0]) and result["n"] == 8
    assert result["selection_uncached"] == result["selection"] > 0 and result["rejected"] == []


def _select_job(**fields: Any) -> SelectJob:
    data = DataConfig(data="alpha/train.jsonl", name="alpha", scoring="letter", max_length=64, validation_size=8)
    return SelectJob(root="/anywhere", base="smollm2-135m", precision="fp32", data=data, library="library",
                     library_digest="0" * 64, samples=8, seed=0, mode="lora", **fields)


@pytest.mark.parametrize("sources", [("a1", "b2"), None])
def test_a_selection_under_the_default_merge_keeps_the_key_its_records_were_written_with(sources):
    listed = list(sources) if sources else None
    assert _select_job(sources=listed).key() == DEFAULT_KEYS[sources]
    assert _select_job(sources=listed, merges=[MergeConfig()]).key() == DEFAULT_KEYS[sources]  # spelled out
    assert _select_job(sources=listed, merges=[MergeConfig(), MergeConfig(method="ties")]).key() != \
        DEFAULT_KEYS[sources]


def test_only_a_given_librarys_selection_job_names_its_merges(tmp_path, tiny_base, tiny_loras):
    library, _ = _library(tmp_path, tiny_loras[:2], [None, None])
    unit = Unit("selection", "select", "alpha", "samples:8")
    for grid, expected in ((None, None), ({"methods": ["ties"], "k": [1]}, ["average", "ties"])):
        config = _config(tmp_path, tiny_base, library, merge_grid=grid)
        job = resolve(unit, Context(config=config, root=str(tmp_path), precision="fp32", library="lib"))
        assert (job.merges and [m.method for m in job.merges]) == expected
    # leave-one-out sources share one init: their selection keeps the default merge, and its key, with a grid
    config = tiny_config(tiny_base, write_tasks(tmp_path), tmp_path / "out")
    sources = {f"source/{t.name}/source": {"result": {"checkpoint_id": t.name}} for t in config.tasks}
    job = resolve(unit, Context(config=config, root=str(tmp_path), precision="fp32", library="library",
                                records=sources))
    assert job.merges is None
