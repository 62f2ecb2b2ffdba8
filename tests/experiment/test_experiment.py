"""A whole tiny experiment end to end: every unit, the honesty rules, the report."""

from __future__ import annotations

import csv
import itertools
import json
import pickle
from pathlib import Path

import pytest

from mashup.experiment import plan_experiment, run_experiment, write_report
from mashup.experiment.analysis import best_lr, train_runs
from mashup.experiment.report import current_records
from mashup.experiment.store import ResultStore
from mashup.library import Library
from tests.experiment.helpers import TASKS, tiny_config, write_tasks

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


def test_a_second_run_finds_everything_done_and_the_report_regenerates(finished, tmp_path):
    config, _, records = finished
    again = run_experiment(config)
    assert not again.computed and not again.reused and sorted(again.already_done) == sorted(records)
    before = (Path(config.out) / "report" / "table3.md").read_text()
    (Path(config.out) / "report" / "table3.md").unlink()
    write_report(config.out)
    assert (Path(config.out) / "report" / "table3.md").read_text() == before
    results = json.loads((Path(config.out) / "results.json").read_text())
    assert set(results) == set(OUTPUTS)


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
