"""An experiment dir moved or copied elsewhere: its own library keeps absolute paths, so each entry naming another
experiment dir's artifacts is re-pointed at the same weights in this dir (other bytes here leave it, for its source
to be found stale). A moved dir resumes; a copied one follows its own files, whatever becomes of the original."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mashup.errors import LibraryError
from mashup.experiment import plan_experiment, run_experiment
from mashup.experiment.own_library import register_source, repoint_library
from mashup.experiment.report import current_records
from mashup.experiment.store import REPLACED, ResultStore, unit_file_name
from mashup.experiment.upstream import source_changed
from mashup.library import CheckpointRecord, Library
from tests.experiment.helpers import comparable, flip_bits, tiny_config, write_tasks
from tests.library.helpers import noisy_copy


def test_entries_naming_another_dirs_artifacts_are_repointed_only_at_the_same_weights(tmp_path, tiny_loras, caplog):
    """Copied (the old dir still there: registered again, keeping what the entry held) or moved (the old dir gone:
    relocated); an entry whose weights here are other bytes is left where it was registered."""
    out = tmp_path / "out"
    same = noisy_copy(tiny_loras[0], out / "artifacts" / "train-a" / "adapter", seed=1)
    other = noisy_copy(tiny_loras[0], out / "artifacts" / "train-b" / "adapter", seed=2)
    (out / "artifacts" / "train-a" / "adapter_init.safetensors").write_bytes(b"init")
    first, second = Library(out / "library").add([same, other], task="alpha", metadata={"lr": 0.001},
                                                  init_reference=str(same.parent / "adapter_init.safetensors"))
    _repointed(Path(shutil.copytree(out, tmp_path / "copied")), first.id, second, caplog)
    assert Library(out / "library").get(first.id).path == first.path  # the original's own library: untouched
    _repointed(out.rename(tmp_path / "moved"), first.id, second, caplog)


def _repointed(root: Path, same: str, other: CheckpointRecord, caplog: pytest.LogCaptureFixture) -> None:
    shutil.rmtree(root / "artifacts" / "train-b" / "adapter")  # trained again: other bytes
    noisy_copy(root / "artifacts" / "train-a" / "adapter", root / "artifacts" / "train-b" / "adapter", seed=3)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        repoint_library(root, root / "library")
    library = Library(root / "library")
    entry = library.get(same)
    assert entry.path == str(root / "artifacts" / "train-a" / "adapter") and library.fresh([entry])[1] == []
    assert (entry.task, entry.metadata) == ("alpha", {"lr": 0.001})
    assert entry.init_reference == str(root / "artifacts" / "train-a" / "adapter_init.safetensors")
    assert library.get(other.id).path == other.path  # left where it was registered
    assert f"library entry {other.id} not re-pointed" in caplog.text and "weights changed" in caplog.text


def _small(tiny_base: Path, tmp_path: Path, **overrides: Any) -> Any:
    return tiny_config(tiny_base, write_tasks(tmp_path)[:2], tmp_path / "out", seeds=1, lrs=[1e-3], max_steps=2,
                       eval_every=1, arms=["scratch", "mashup_loss"], samples_sweep=[], merge_grid=None, **overrides)


def _copy(config: Any, tmp_path: Path) -> Any:
    return config.model_copy(update={"out": str(shutil.copytree(config.out, tmp_path / "copy"))})


def test_a_copied_experiment_follows_its_own_files_and_outlives_the_original(tiny_base, tmp_path):
    """A rerun in a copy re-points its library at the copy's sources: the original deleted, the copy reruns, plans
    and reports from its own files."""
    config = _small(tiny_base, tmp_path)
    run_experiment(config)
    copy = _copy(config, tmp_path)
    assert all(p.recorded for p in plan_experiment(copy))
    assert run_experiment(copy).computed == []
    library = Library(Path(copy.out) / "library")
    assert all(Path(copy.out) in Path(r.path).parents for r in library.list())
    assert all(Path(copy.out) in Path(r.init_reference).parents for r in library.list())
    shutil.rmtree(config.out)
    assert all(p.recorded for p in plan_experiment(copy))
    (Path(copy.out) / "report" / "table3.md").unlink()
    again = run_experiment(copy)
    assert again.computed == [] and again.reused == [] and (Path(copy.out) / "report" / "table3.md").is_file()
    assert not (Path(copy.out) / "artifacts" / REPLACED).exists() and library.fresh(library.list())[1] == []


def test_a_copy_computes_from_its_own_sources_though_the_original_is_edited_since(tiny_base, tmp_path):
    """Copied before its merges, then the original's sources edited: the copy's sources are unchanged, so nothing
    is stale there, and its merges read its own weights (the figures the original had before the edit)."""
    config, undone = _killed_before_merges(tiny_base, tmp_path)
    copy = _copy(config, tmp_path)
    for entry in Library(Path(config.out) / "library").list():
        flip_bits(Path(entry.path), 2)
    assert all(p.recorded for p in plan_experiment(copy) if p.unit.phase == "sources")
    run = run_experiment(copy)
    assert sorted(run.computed) == sorted(undone) and not (Path(copy.out) / "artifacts" / REPLACED).exists()
    records = current_records(ResultStore(copy.out), copy)
    assert comparable({u: records[u] for u in undone}) == comparable(undone)
    library = Library(Path(copy.out) / "library")
    assert all(Path(copy.out) in Path(r.path).parents for r in library.list())
    assert library.fresh(library.list())[1] == []


def test_sources_trained_again_to_the_same_bytes_re_point_their_entries(tiny_base, tmp_path):
    """Another ``eval_every`` is another training job, computed again to the same weights (a CPU run is
    deterministic) while the first run's artifacts stay: each source's entry is re-pointed at the new run's weights
    (under the same id), where registering them again was refused as already registered."""
    config = _small(tiny_base, tmp_path)
    run_experiment(config)
    library = Library(Path(config.out) / "library")
    before = {r.id: r.path for r in library.list()}
    again = config.model_copy(update={"eval_every": 2})
    run = run_experiment(again)
    assert any(u.startswith("source/") for u in run.computed)
    after = {r.id: r.path for r in library.list()}
    assert after.keys() == before.keys() and all(after[i] != before[i] and Path(after[i]).is_dir() for i in after)
    assert library.fresh(library.list())[1] == []


def _source(root: Path, train: str, task: str = "alpha") -> SimpleNamespace:
    """The fields of a SourceJob that registering it reads."""
    return SimpleNamespace(root=str(root), mode="lora", train_artifact=train, library="library",
                           data=SimpleNamespace(name=task), base=None, lr=1e-3, seed=0)


def _trained(root: Path, tiny_loras: list[Path], *trains: str, seed: int = 1) -> None:
    """Training runs ``trains`` under ``root/artifacts`` that all wrote the same adapter."""
    for train in trains:
        noisy_copy(tiny_loras[0], root / "artifacts" / train / "adapter", seed=seed)
        (root / "artifacts" / train / "adapter_init.safetensors").write_bytes(b"init")


@pytest.mark.parametrize("first_run", ["kept", "deleted"])
def test_the_same_bytes_registered_by_another_source_are_refused_not_re_pointed(tmp_path, tiny_loras, first_run):
    """Whether or not the other source's run dir is still there (a gone one is no move here)."""
    root = tmp_path / "out"
    _trained(root, tiny_loras, "train-a", "train-b")
    first = register_source(_source(root, "train-a", "alpha"), tmp_path)
    if first_run == "deleted":
        shutil.rmtree(root / "artifacts" / "train-a")
    with pytest.raises(LibraryError, match=r"source beta \(lr 0.001, seed 0\) trained to the same weights as source "
                                           rf"alpha \(lr 0.001, seed 0\), registered as {first['checkpoint_id']} ") \
            as caught:
        register_source(_source(root, "train-b", "beta"), tmp_path)
    assert "two sources with the same weights" in caught.value.fix
    [entry] = Library(root / "library").list()
    assert (entry.task, entry.path) == ("alpha", str(root / "artifacts" / "train-a" / "adapter"))


def test_a_source_whose_entry_went_to_a_run_since_deleted_is_registered_again_at_its_own(tmp_path, tiny_loras):
    """Re-pointed at another run of the source (another config, the same bytes), whose dir is deleted since: the
    first config's source is not done, and registering it points the entry back at its own run."""
    root = tmp_path / "out"
    _trained(root, tiny_loras, "train-1", "train-2")
    first = register_source(_source(root, "train-1"), tmp_path)
    assert register_source(_source(root, "train-2"), tmp_path) == first
    assert source_changed(_source(root, "train-1"), first) is None  # the other run is there: the entry serves both
    shutil.rmtree(root / "artifacts" / "train-2")
    assert "gone" in source_changed(_source(root, "train-1"), first)
    assert register_source(_source(root, "train-1"), tmp_path) == first
    library = Library(root / "library")
    assert library.get(first["checkpoint_id"]).path == str(root / "artifacts" / "train-1" / "adapter")
    assert library.fresh(library.list())[1] == [] and source_changed(_source(root, "train-1"), first) is None


@pytest.mark.parametrize("linked_name", ["scratch", "artifacts"])
def test_artifacts_linked_to_another_disk(tmp_path, tiny_loras, caplog, linked_name):
    """``artifacts`` a link (to a dir of another name, or named so too): entries are found as this dir's, a
    re-registration replaces a stale one, and a re-point is no move."""
    root, scratch = tmp_path / "out", tmp_path / "disk" / linked_name
    root.mkdir()
    scratch.mkdir(parents=True)
    (root / "artifacts").symlink_to(scratch)
    _trained(root, tiny_loras, "train-a")
    register_source(_source(root, "train-a"), tmp_path)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        repoint_library(root, root / "library")
    assert "moved" not in caplog.text and "re-pointed" not in caplog.text
    shutil.rmtree(scratch / "train-a" / "adapter")  # trained again to other bytes, killed before its record
    _trained(root, tiny_loras, "train-a", seed=2)
    again = register_source(_source(root, "train-a"), tmp_path)
    library = Library(root / "library")
    assert [r.id for r in library.list()] == [again["checkpoint_id"]] and library.fresh(library.list())[1] == []


def test_a_dir_moved_after_going_back_to_a_config_resumes_with_nothing_computed(tiny_base, tmp_path):
    """Config 1, then another eval_every (its sources' entries re-pointed at the new runs), then config 1 again,
    then the dir moved: the entries' weights are found in the moved dir, nothing is computed again."""
    config = _small(tiny_base, tmp_path)
    run_experiment(config)
    run_experiment(config.model_copy(update={"eval_every": 2}))
    assert run_experiment(config).computed == []
    moved = config.model_copy(update={"out": str(Path(config.out).rename(tmp_path / "moved"))})
    assert all(p.recorded for p in plan_experiment(moved))
    assert run_experiment(moved).computed == [] and not (tmp_path / "moved" / "artifacts" / REPLACED).exists()


def test_a_finished_experiment_moved_elsewhere_resumes_with_nothing_computed(tiny_base, tmp_path):
    """Its library names the sources' weights where they were: gone after a move, which is no recompute."""
    config = _small(tiny_base, tmp_path)
    run_experiment(config)
    moved = config.model_copy(update={"out": str((tmp_path / "out").rename(tmp_path / "moved"))})
    assert all(p.recorded for p in plan_experiment(moved))
    assert run_experiment(moved).computed == [] and not (tmp_path / "moved" / "artifacts" / ".replaced").exists()


def _killed_before_merges(tiny_base: Path, tmp_path: Path, **overrides: Any) -> tuple[Any, dict[str, Any]]:
    """A finished run with its merges and mashup runs undone, as if killed before its merges: (config, undone)."""
    config = _small(tiny_base, tmp_path, **overrides)
    run_experiment(config)
    store = ResultStore(config.out)
    undone = {uid: rec for uid, rec in store.records().items() if rec["fields"]["phase"] in ("merges", "mashup")}
    assert undone
    for uid, record in undone.items():
        (store.units_dir / unit_file_name(uid)).unlink()
        shutil.rmtree(store.artifact(record["artifact"]), ignore_errors=True)
    return config, undone


def test_an_unfinished_experiment_moved_elsewhere_relocates_its_sources_and_completes(tiny_base, tmp_path):
    """Killed before its merges, then moved: the merges to come read the sources where they are now, and their
    init references (ties takes task vectors against them)."""
    config, undone = _killed_before_merges(tiny_base, tmp_path, merge_method="ties")
    moved = config.model_copy(update={"out": str((tmp_path / "out").rename(tmp_path / "moved"))})
    assert all(p.recorded for p in plan_experiment(moved) if p.unit.phase == "sources")  # dry run: nothing written
    assert all(str(tmp_path / "out") in r.path for r in Library(tmp_path / "moved" / "library").list())
    run = run_experiment(moved)
    assert sorted(run.computed) == sorted(undone) and not (tmp_path / "moved" / "artifacts" / ".replaced").exists()
    library = Library(tmp_path / "moved" / "library")
    assert all(str(tmp_path / "moved") in r.path for r in library.list()) and library.fresh(library.list())[1] == []
    assert all(r.init_reference == str(Path(r.path).parent / "adapter_init.safetensors") for r in library.list())


def test_a_source_trained_again_after_a_move_is_relocated_before_the_merges(tiny_base, tmp_path):
    """Moved, and a source's training run lost: trained again to the same weights, its entry follows them."""
    config, undone = _killed_before_merges(tiny_base, tmp_path)
    lost = Library(tmp_path / "out" / "library").list()[0]
    moved = config.model_copy(update={"out": str((tmp_path / "out").rename(tmp_path / "moved"))})
    shutil.rmtree(tmp_path / "moved" / "artifacts" / Path(lost.path).parent.name)
    run = run_experiment(moved)
    assert set(undone) < set(run.computed)
    entry = Library(tmp_path / "moved" / "library").get(lost.id)
    assert entry.path == str(tmp_path / "moved" / "artifacts" / Path(lost.path).parent.name / "adapter")
    assert run_experiment(moved).computed == []
