"""A whole tiny experiment end to end: every unit, the honesty rules, the report."""

from __future__ import annotations

import csv
import itertools
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest

from mashup.experiment import plan_experiment, run_experiment, write_report
from mashup.experiment.analysis import best_lr, train_runs
from mashup.experiment.manifest import scan
from mashup.experiment.report import current_records
from mashup.experiment.store import ResultStore
from mashup.library import Library
from tests.experiment.helpers import TASKS, flip_bits, tiny_config, track_reads, write_tasks

OUTPUTS = ("table3", "table4", "table5", "table6", "learning_rates", "figure2", "figure3", "figure4")


class RemoteLikeExecutor:
    """Runs each job as a remote worker would get it: function, job and result all go through pickle."""

    def __init__(self) -> None:
        self.jobs = 0

    def map(self, fn, items):
        for item in items:
            self.jobs += 1
            yield pickle.loads(pickle.dumps(pickle.loads(pickle.dumps(fn))(pickle.loads(pickle.dumps(item)))))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_base):
    root = tmp_path_factory.mktemp("experiment")
    config = tiny_config(tiny_base, write_tasks(root), root / "out")
    executor = RemoteLikeExecutor()
    run = run_experiment(config, executor=executor)
    assert executor.jobs == len(run.computed)  # every distinct job went through it; duplicates did not
    return config, run, current_records(ResultStore(config.out), config)


def test_every_planned_unit_is_recorded_and_every_output_written(finished):
    config, run, records = finished
    planned = {p.unit.id for p in plan_experiment(config)}
    assert set(records) == planned
    assert sorted(run.computed + run.reused) == sorted(planned) and not run.already_done
    assert len(run.reused) > 0  # equal jobs (e.g. selections that agree) are computed once
    report = Path(config.out) / "report"
    for name, suffix in itertools.product(OUTPUTS, (".md", ".csv", ".png")):
        assert (report / f"{name}{suffix}").stat().st_size > 0, name + suffix
    for name in ("table3", "table6"):  # every arm on every task has a number
        rows = list(csv.DictReader(open(report / f"{name}.csv")))
        assert rows and all(row["mean"] for row in rows), name
    assert "n/a" not in (report / "table3.md").read_text()


def test_no_candidate_was_trained_on_its_target(finished):
    config, _, records = finished
    library = Library(Path(config.out) / "library")
    tasks_of = {r.id: r.task for r in library.list()}
    assert sorted(tasks_of.values()) == sorted(TASKS)  # one source per task: its scratch run
    for task in TASKS:
        for unit, record in records.items():
            if record["fields"]["task"] == task and record["fields"]["kind"] == "select":
                ranked = [tasks_of[s["id"]] for s in record["result"]["ranking"]]
                assert task not in ranked and len(ranked) == len(TASKS) - 1, unit
            if record["fields"]["task"] == task and record["fields"]["kind"] == "merge":
                assert task not in record["result"]["tasks"], unit


def test_sources_are_the_scratch_runs_at_their_validation_best_lr(finished):
    config, _, records = finished
    for task in TASKS:
        source = records[f"source/{task}/source"]["result"]
        assert source["lr"] == best_lr(train_runs(records, task, "scratch")) and source["seed"] == config.seeds[0]


def test_each_arm_reports_the_lr_that_won_on_validation(finished):
    config, _, records = finished
    rows = list(csv.DictReader(open(Path(config.out) / "report" / "table3.csv")))
    for row in rows:
        if row["arm"] in ("scratch", "mashup_loss"):
            runs = train_runs(records, row["task"], row["arm"])
            validation = {lr: sum(r.validation for r in rs) / len(rs) for lr, rs in runs.items()}
            assert validation[float(row["lr"])] == max(validation.values())
            test = [r.test for r in runs[float(row["lr"])]]
            assert float(row["mean"]) == pytest.approx(sum(test) / len(test))


def test_mashup_starts_at_its_merged_init_and_scratch_at_the_base(finished):
    _, _, records = finished
    for task in TASKS:
        init = records[f"merge/{task}/mashup_loss"]["result"]["test"]["accuracy"]
        base = records[f"eval/{task}/base"]["result"]["test"]["accuracy"]
        for unit, record in records.items():
            fields = record["fields"]
            if fields["kind"] == "train" and fields["task"] == task and fields["arm"] in ("mashup_loss", "scratch"):
                expected = init if fields["arm"] == "mashup_loss" else base
                assert record["result"]["curve"][0]["accuracy"] == expected, unit
                assert record["result"]["early_drop"]["init_accuracy"] == expected


def test_a_training_artifacts_result_json_names_the_artifact_not_its_temp_dir(finished):
    config, _, records = finished
    trained = {record["artifact"] for record in records.values() if record["fields"]["kind"] == "train"}
    assert trained
    for name in trained:
        artifact = Path(config.out) / "artifacts" / name
        assert json.loads((artifact / "result.json").read_text())["out"] == str(artifact)


def test_a_second_run_finds_everything_done_and_the_report_regenerates(finished, tmp_path, monkeypatch):
    config, _, records = finished
    hashed = track_reads(monkeypatch, Path(config.out) / "artifacts")
    again = run_experiment(config)
    assert not again.computed and not again.reused and sorted(again.already_done) == sorted(records)
    assert hashed == []  # every artifact checked by its files' stats alone, not read
    before = (Path(config.out) / "report" / "table3.md").read_text()
    (Path(config.out) / "report" / "table3.md").unlink()
    write_report(config.out)
    assert (Path(config.out) / "report" / "table3.md").read_text() == before
    results = json.loads((Path(config.out) / "results.json").read_text())
    assert set(results) == {*OUTPUTS, "partial", "missing_units", "planned_units"}
    assert results["partial"] is False and results["missing_units"] == [] and results["planned_units"] > 0


def _shared_by_two_phases(config, records, tmp_path) -> tuple[Any, str, list[str]]:
    """A copy of the finished dir, and a training artifact recorded in two phases with its units: a Figure 3
    point trains exactly as the Mashup arm at its best LR."""
    by_artifact: dict[str, list[str]] = {}
    for unit, record in records.items():
        by_artifact.setdefault(record["artifact"], []).append(unit)
    name, units = next((name, sorted(units)) for name, units in by_artifact.items()
                       if {records[u]["fields"]["phase"] for u in units} == {"mashup", "sweeps"})
    return config.model_copy(update={"out": str(shutil.copytree(config.out, tmp_path / "out"))}), name, units


def test_an_edited_artifact_two_phases_share_is_computed_once_and_neither_unit_again(finished, tmp_path):
    """Computed again in the first phase; the second finds it holding the files it recorded (no turn by turn)."""
    config, name, units = _shared_by_two_phases(finished[0], finished[2], tmp_path)
    (Path(config.out) / "artifacts" / name / "train_config.yaml").write_text("lr: 1.0\n")
    statuses = {p.unit.id: p.status for p in plan_experiment(config)}
    assert {statuses[u] for u in units} == {"stale", "waiting"}
    run = run_experiment(config)
    computed = [u for u in run.computed if finished[2][u]["artifact"] == name]
    assert len(computed) == 1 and set(units) - set(computed) <= set(run.already_done + run.reused)
    again = run_experiment(config)
    assert not again.computed and not again.reused


def test_an_artifact_remade_for_an_equal_unit_is_recorded_again_from_not_computed(finished, tmp_path):
    """The Mashup unit's record lists the artifact as it is now (remade, other bytes: a GPU is not bit for bit);
    the Figure 3 unit's lists it as it was. That one is recorded again from the artifact, which stays."""
    config, name, units = _shared_by_two_phases(finished[0], finished[2], tmp_path)
    store = ResultStore(config.out)
    (store.artifact(name) / "train_config.yaml").write_text("lr: 1.0\n")
    mashup = next(u for u in units if finished[2][u]["fields"]["phase"] == "mashup")
    store.write(mashup, {**store.record(mashup), "manifest": scan(store.artifact(name))[1]})
    statuses = {p.unit.id: p.status for p in plan_experiment(config)}
    phases = {u: finished[2][u]["fields"]["phase"] for u in units}  # the sweeps wait on the Mashup units
    assert {u: statuses[u] for u in units} == {u: "recorded" if u == mashup else "changed" if phases[u] == "mashup"
                                               else "waiting" for u in units}
    run = run_experiment(config)
    assert not run.computed and sorted(run.reused) == sorted(set(units) - {mashup})
    assert (store.artifact(name) / "train_config.yaml").read_text() == "lr: 1.0\n"


def test_the_cli_reports_resumes_and_plans(finished, tmp_path, capsys, monkeypatch):
    import yaml

    from tests.test_cli import run_cli

    config, _, records = finished
    out, err = run_cli(["report", config.out], capsys, monkeypatch)
    assert "Table 3" in out and "report.md" in err
    config_file = tmp_path / "mine.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    planned = json.loads(run_cli(["experiment", config_file, "--dry-run", "--json"], capsys, monkeypatch)[0])
    assert len(planned["units"]) == len(records) and all(u["recorded"] for u in planned["units"])
    summary = json.loads(run_cli(["experiment", config_file, "--json"], capsys, monkeypatch)[0])
    assert summary["already_done"] == len(records) and summary["computed"] == 0
    run_cli(["experiment"], capsys, monkeypatch, expect=2)
    run_cli(["experiment", config_file, "--profile", "cpu-mini"], capsys, monkeypatch, expect=2)
    _, err = run_cli(["report", tmp_path], capsys, monkeypatch, expect=1)
    assert "not an experiment dir" in err


def test_a_given_library_supplies_the_sources_and_fixes_both_arms_lora_shape(tmp_path, tiny_base, tiny_loras):
    library = Library(tmp_path / "lib")
    for path, task in zip(tiny_loras, ("alpha", "beta", "other")):
        library.add([path], task=task)
    config = tiny_config(tiny_base, write_tasks(tmp_path), tmp_path / "out", library=str(tmp_path / "lib"), seeds=1,
                         lrs=[1e-3], arms=["scratch", "mashup_loss"], samples_sweep=[], merge_grid=None)
    run_experiment(config)
    records = current_records(ResultStore(config.out), config)
    assert not (tmp_path / "out" / "library").exists() and not any(u.startswith("source/") for u in records)
    alpha = records["select/alpha/samples:8"]["result"]
    assert {s["task"] for s in alpha["ranking"]} == {"beta", "other"} and len(alpha["excluded"]) == 1
    for unit in ("train/alpha/scratch/lr=0.001/seed=0", "train/alpha/mashup_loss/lr=0.001/seed=0"):
        shape = records[unit]["result"]["train_config"]
        assert (shape["lora_r"], sorted(shape["target_modules"])) == (4, ["q_proj", "up_proj", "v_proj"]), unit


def _copy(config: Any, tmp_path: Path) -> Any:
    return config.model_copy(update={"out": str(shutil.copytree(config.out, tmp_path / "out"))})


def test_a_source_whose_training_run_is_computed_again_with_other_bytes_is_registered_again(tiny_base, tmp_path,
                                                                                          monkeypatch):
    """The source unit's key names its run's artifact, not its bytes: a run remade with other bytes makes the
    source (and so the selections ranking it) stale, and the library entry is made for the weights now there."""
    from mashup.experiment import jobs

    config = tiny_config(tiny_base, write_tasks(tmp_path)[:2], tmp_path / "out", seeds=1, lrs=[1e-3],
                         max_steps=2, eval_every=1, arms=["scratch", "mashup_loss"], samples_sweep=[], merge_grid=None)
    run_experiment(config)
    real = jobs._RUNNERS["train"]
    monkeypatch.setitem(jobs._RUNNERS, "train", lambda job, tmp: _noisy(real, job, tmp))
    store = ResultStore(config.out)
    source = store.record("source/alpha/source")
    flip_bits(store.artifact(source["job"]["train_artifact"]) / "adapter", 2)  # edited by hand: computed again
    run = run_experiment(config)
    assert "source/alpha/source" in run.computed and "select/beta/samples:8" in run.computed
    library = Library(store.library_dir)
    assert library.fresh(library.list())[1] == []
    assert store.record("source/alpha/source")["result"]["checkpoint_id"] != source["result"]["checkpoint_id"]
    assert all(p.recorded for p in plan_experiment(config))


def _noisy(real: Any, job: Any, tmp: Path) -> Any:
    result = real(job, tmp)
    flip_bits(tmp / "adapter", 1)
    return result


def test_runs_from_a_merge_computed_again_with_other_test_figures_are_computed_again(finished, tmp_path,
                                                                                   monkeypatch):
    """A run's key names its init's artifact; its step 0 is that init's test figures. A merge remade with other
    figures (a GPU's merge is not bit for bit) makes the runs from it stale, though their keys are unchanged."""
    from mashup.experiment import jobs

    config, records = _copy(finished[0], tmp_path), finished[2]
    real = jobs._RUNNERS["merge"]

    def shifted(job: Any, tmp: Path) -> Any:
        result = real(job, tmp)
        return {**result, "test": {**result["test"], "loss": result["test"]["loss"] + 0.5}}

    monkeypatch.setitem(jobs._RUNNERS, "merge", shifted)
    store = ResultStore(config.out)
    merge = records["merge/alpha/mashup_loss"]["artifact"]
    (store.artifact(merge) / "merged" / "adapter_config.json").write_text("{}")  # edited by hand: computed again
    runs = sorted(u for u, r in records.items() if r["job"].get("init") == merge)
    assert runs and {p.unit.id: p.status for p in plan_experiment(config)}[runs[0]] == "waiting"
    run = run_experiment(config)
    assert set(runs) <= set(run.computed + run.reused)
    assert all(store.record(u)["result"]["curve"][0]["loss"] == store.record("merge/alpha/mashup_loss")["result"]
               ["test"]["loss"] for u in runs)
