"""Replacing an edited artifact end to end: a replacement finished before a kill is kept, a run killed between the
discard and the retirement of its records is completed by the next, an artifact whose result file is not its kind's
is computed again, and what was moved aside is summed up."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from pathlib import Path
from typing import Any

import pytest

from mashup.experiment import plan_experiment, run_experiment
from mashup.experiment.manifest import RESULT
from mashup.experiment.report import current_records, missing_units
from mashup.experiment.store import REPLACED, ResultStore, unit_file_name
from tests.experiment.helpers import comparable, tiny_config, write_tasks

TRAIN = "train/alpha/mashup_loss/lr=0.001/seed=0"  # a run from a merge: no later unit is built on it


def _small(tiny_base: Path, tmp_path: Path) -> Any:
    return tiny_config(tiny_base, write_tasks(tmp_path)[:2], tmp_path / "out", seeds=1, lrs=[1e-3], max_steps=2,
                       eval_every=1, arms=["scratch", "mashup_loss"], samples_sweep=[], merge_grid=None)


def test_a_replacement_finished_before_a_kill_is_reused_not_replaced_again(tiny_base, tmp_path, monkeypatch):
    """Killed after the new artifact's rename, before its unit's record: the old record (naming the artifact) was
    retired, so the unit is not done (dry run, report) and the next run records the artifact, not recomputes it."""
    from mashup.experiment import jobs

    config = _small(tiny_base, tmp_path)
    run_experiment(config)
    store = ResultStore(config.out)
    artifact = store.record(TRAIN)["artifact"]
    (store.artifact(artifact) / "train_config.yaml").write_text("edited by hand\n")
    real, computed = jobs._RUNNERS["train"], []

    def noisy(job: Any, tmp: Path) -> Any:  # other bytes on every computation, as a GPU gives
        computed.append(job.artifact)
        result = real(job, tmp)
        (tmp / "nondeterministic.bin").write_bytes(secrets.token_bytes(8))
        return result

    monkeypatch.setitem(jobs._RUNNERS, "train", noisy)
    write = ResultStore.write

    def killed(self: ResultStore, unit_id: str, record: dict[str, Any]) -> None:
        if unit_id == TRAIN:
            raise KeyboardInterrupt("killed after the artifact's rename, before its record")
        write(self, unit_id, record)

    monkeypatch.setattr(ResultStore, "write", killed)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config)
    monkeypatch.setattr(ResultStore, "write", write)
    assert computed == [artifact] and store.has_artifact(artifact) and store.record(TRAIN) is None
    assert {p.unit.id: p.status for p in plan_experiment(config)}[TRAIN] == "new"
    assert TRAIN in missing_units(store, config, current_records(store, config))[0]
    assert [p.name.startswith(unit_file_name(TRAIN)[:-5]) for p in (store.units_dir / REPLACED).iterdir()] == [True]
    run = run_experiment(config)
    assert TRAIN in run.reused and artifact not in computed[1:]
    assert len(list((store.artifacts_dir / REPLACED).iterdir())) == 1 and all(p.recorded for p in
                                                                              plan_experiment(config))


@pytest.mark.parametrize("bad", ["{}", "[1]"])
def test_an_artifact_whose_result_is_not_its_kinds_is_computed_again_and_the_run_sums_up_what_it_moved(
        tiny_base, tmp_path, caplog, bad):
    """The result file is in no manifest: reused as it was, it made a record no later run could read."""
    config = _small(tiny_base, tmp_path)
    run_experiment(config)
    store = ResultStore(config.out)
    unit = "eval/alpha/base"
    artifact = store.record(unit)["artifact"]
    (store.units_dir / unit_file_name(unit)).unlink()  # as if killed before recording it
    (store.artifact(artifact) / RESULT).write_text(bad)
    with caplog.at_level(logging.WARNING):
        run = run_experiment(config)
    assert unit in run.computed and store.unreadable(unit) is None
    assert json.loads((store.artifact(artifact) / RESULT).read_text()) == store.record(unit)["result"]
    assert f"artifact {artifact} is computed again: incomplete ({RESULT} is not a unit result" in caplog.text
    assert f"{store.artifacts_dir / REPLACED} holds 1 replaced artifact(s)" in caplog.text
    assert all(p.recorded for p in plan_experiment(config))


def test_a_job_never_started_keeps_its_records_when_the_phase_fails_first(tiny_base, tmp_path, monkeypatch):
    """Records are retired as their artifact is computed, not for the whole phase up front: a run that fails at
    its first merge leaves the other merge's record (its figures) where report finds it."""
    from mashup.experiment import jobs

    config = _small(tiny_base, tmp_path)
    run_experiment(config)
    store = ResultStore(config.out)
    merges = sorted(unit for unit in (p.unit.id for p in plan_experiment(config)) if unit.startswith("merge/"))
    assert len(merges) == 2
    for unit in merges:  # deleted to free disk, say
        shutil.rmtree(store.artifact(store.record(unit)["artifact"]))

    def failing(job: Any, tmp: Path) -> Any:
        raise RuntimeError("out of memory")

    monkeypatch.setitem(jobs._RUNNERS, "merge", failing)
    with pytest.raises(Exception, match="out of memory"):
        run_experiment(config)
    assert [store.record(unit) is None for unit in merges] == [True, False]


def test_a_run_killed_between_discarding_an_artifact_and_retiring_its_records_is_completed_by_the_next(
        tiny_base, tmp_path, monkeypatch):
    """The edited artifact moved aside, its record not yet retired: the record names an artifact that is gone, so
    the unit is not done; the next run retires the record, computes the artifact once, and leaves every other
    record as it was, and the edited artifact and the old record where they can still be found."""
    config = _small(tiny_base, tmp_path)
    run_experiment(config)
    store = ResultStore(config.out)
    before = store.records()
    artifact = before[TRAIN]["artifact"]
    (store.artifact(artifact) / "train_config.yaml").write_text("edited by hand\n")
    discard = ResultStore.discard_artifact

    def killed(self: ResultStore, name: str, why: str) -> Path:
        discard(self, name, why)
        raise KeyboardInterrupt("killed after the discard, before the records are retired")

    monkeypatch.setattr(ResultStore, "discard_artifact", killed)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config)
    monkeypatch.setattr(ResultStore, "discard_artifact", discard)
    assert not store.artifact(artifact).exists() and store.record(TRAIN) == before[TRAIN]
    assert {p.unit.id: p.status for p in plan_experiment(config)}[TRAIN] == "stale"
    run = run_experiment(config)
    assert run.computed == [TRAIN] and not run.reused
    [edited] = (store.artifacts_dir / REPLACED).iterdir()
    assert (edited / "train_config.yaml").read_text() == "edited by hand\n"
    [retired] = (store.units_dir / REPLACED).iterdir()
    assert json.loads(retired.read_text()) == before[TRAIN]
    after = store.records()
    assert {u: r for u, r in after.items() if u != TRAIN} == {u: r for u, r in before.items() if u != TRAIN}
    assert comparable({TRAIN: after[TRAIN]}) == comparable({TRAIN: before[TRAIN]})
    assert all(p.recorded for p in plan_experiment(config))
