"""What a first-time user meets: a dry run that tells what a run will redo, one clear line for a mistyped library,
executor or occupied out dir, and progress a log file can follow."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from mashup.config import MergeConfig
from mashup.experiment import plan_experiment, run_experiment
from mashup.experiment.jobs import SelectJob
from mashup.experiment.progress import UnitProgress
from mashup.experiment.store import ResultStore, unit_file_name
from tests.experiment.helpers import tiny_config, write_tasks
from tests.test_cli import run_cli

SMALL = dict(seeds=1, lrs=[1e-3], max_steps=2, eval_every=1, arms=["scratch", "mashup_loss"], samples_sweep=[],
             merge_grid=None, k=1)
BASE_UNITS = {"eval/alpha/base", "eval/beta/base"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_base):
    """Two tasks run to the end: 12 units (base, scratch, source, selection, merge and Mashup run per task)."""
    root = tmp_path_factory.mktemp("first_use")
    config = tiny_config(tiny_base, write_tasks(root)[:2], root / "done", **SMALL)
    run_experiment(config)
    return config


def _copy(config, tmp_path: Path, **changes):
    out = shutil.copytree(config.out, tmp_path / "out")
    return config.model_copy(update={"out": str(out), **changes})


def _config_file(config, tmp_path: Path) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def test_a_dry_run_after_a_config_change_counts_as_done_only_what_the_run_skips(finished, tmp_path, capsys,
                                                                                 monkeypatch):
    """Only max_steps changed: every training unit's job changed, and what is built on them with it."""
    config = _copy(finished, tmp_path, max_steps=3)
    planned = {p.unit.id: p for p in plan_experiment(config)}
    assert len(planned) == 12
    assert {u for u, p in planned.items() if p.recorded} == BASE_UNITS
    assert {u for u, p in planned.items() if p.status == "stale"} == {f"train/{t}/scratch/lr=0.001/seed=0"
                                                                      for t in ("alpha", "beta")}
    assert all(p.status == "waiting" for u, p in planned.items() if u.startswith(("source/", "merge/", "select/")))
    out, _ = run_cli(["experiment", _config_file(config, tmp_path), "--dry-run"], capsys, monkeypatch)
    summary = " ".join(out.split())
    assert "2 recorded, 2 stale (recorded for another job, or its files edited or removed since: run again), 8 " \
           "recorded but" in summary
    run = run_experiment(config)
    assert set(run.already_done) == BASE_UNITS and len(run.computed) + len(run.reused) == 10


@pytest.mark.parametrize("change", ["edit", "remove"])
def test_a_unit_whose_artifact_was_edited_or_removed_is_stale_and_computed_again(finished, tmp_path, change):
    """Not recorded again as it is now: the merged weights are computed again (the same bytes, here), and the
    training units keyed on that merge wait for it, then count as done."""
    config = _copy(finished, tmp_path)
    store = ResultStore(config.out)
    unit = "merge/beta/mashup_loss"
    artifact = store.artifact(store.record(unit)["artifact"])
    weights = artifact / "merged" / "adapter_model.safetensors"
    original = weights.read_bytes()
    if change == "edit":
        weights.write_bytes(original[:-4] + b"edit")  # same size: told by its hash
    else:
        shutil.rmtree(artifact)
    planned = {p.unit.id: p for p in plan_experiment(config)}
    assert [u for u, p in planned.items() if p.status == "stale"] == [unit]
    assert [u for u, p in planned.items() if p.status == "waiting"] == ["train/alpha/mashup_loss/lr=0.001/seed=0",
                                                                        "train/beta/mashup_loss/lr=0.001/seed=0"]
    run = run_experiment(config)
    assert run.computed == [unit] and not run.reused and weights.read_bytes() == original
    assert store.valid_record(unit, store.record(unit)["key"]) is not None


def test_stray_files_and_edited_timing_files_change_nothing(finished, tmp_path):
    """A file manager's .DS_Store, and the seconds in a curve or a result (they differ between equal
    computations), are not part of an artifact's manifest."""
    config = _copy(finished, tmp_path)
    store = ResultStore(config.out)
    for unit in ("merge/beta/mashup_loss", "train/alpha/scratch/lr=0.001/seed=0"):
        artifact = store.artifact(store.record(unit)["artifact"])
        for stray in (artifact / ".DS_Store", artifact / "._unit_result.json", next(artifact.glob("*/")) / ".DS_Store"):
            stray.write_bytes(b"\0Bud1")
    (artifact / "curve.csv").write_text("step,accuracy,loss,train_loss,seconds\n0,0.5,1.0,,9.9\n")
    assert all(p.recorded for p in plan_experiment(config))
    assert len(run_experiment(config).already_done) == 12


def test_a_record_of_the_wrong_shape_is_redone_and_named_by_the_report(finished, tmp_path, capsys, monkeypatch):
    """Valid JSON the readers cannot use (here a training result without its settings) is no record: the run redoes
    the unit, and `mashup report` names the file in one line instead of failing with a KeyError."""
    config = _copy(finished, tmp_path)
    store = ResultStore(config.out)
    unit = "train/alpha/scratch/lr=0.001/seed=0"
    record = store.record(unit)
    del record["result"]["train_config"]
    (store.units_dir / unit_file_name(unit)).write_text(json.dumps(record))
    _, err = run_cli(["report", config.out], capsys, monkeypatch, expect=1)
    assert len(err.strip().splitlines()) == 1 and unit_file_name(unit) in err
    assert "not a unit record: result.train_config: field required" in err and "rerun `mashup experiment`" in err
    assert {p.unit.id: p.status for p in plan_experiment(config)}[unit] == "stale"
    run = run_experiment(config)
    assert unit not in run.already_done and unit in run.computed + run.reused
    run_cli(["report", config.out], capsys, monkeypatch)


def test_a_records_job_shows_the_merges_its_selection_filtered_under(finished):
    """Leave-one-out selection keeps the default merge as None in its key (the key records had before the field);
    the record shows the merge, not null."""
    store = ResultStore(finished.out)
    record = store.record("select/alpha/samples:8")
    assert record["job"]["merges"] == [MergeConfig().model_dump(mode="json")]
    assert SelectJob.model_validate({**record["job"], "root": finished.out}).key() == record["key"]


def test_a_given_library_that_does_not_exist_is_named_by_a_dry_run_and_a_run(tiny_base, tmp_path, capsys,
                                                                              monkeypatch):
    missing = tmp_path / "no-such-lib"
    config = tiny_config(tiny_base, write_tasks(tmp_path)[:2], tmp_path / "out", **SMALL, library=str(missing))
    config_file = _config_file(config, tmp_path)
    for dry in (["--dry-run"], []):
        _, err = run_cli(["experiment", config_file, *dry], capsys, monkeypatch, expect=1)
        assert f"library dir not found in {missing}" in " ".join(err.split()) and "short of" not in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_hub_base_that_cannot_be_fetched_fails_before_anything_is_written(tmp_path, capsys, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    asked: list[list[str]] = []

    def offline(repo_id, allow_patterns=None, **kwargs):
        asked.append(allow_patterns)
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    config = tiny_config("nobody/no-model", write_tasks(tmp_path)[:2], tmp_path / "out", **SMALL)
    for dry in (["--dry-run"], []):
        _, err = run_cli(["experiment", _config_file(config, tmp_path), *dry], capsys, monkeypatch, expect=1)
        assert "cannot get base model 'nobody/no-model' from the Hugging Face Hub" in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and asked == [["config.json"]] * 2  # a check, not the weights


def test_a_hub_base_with_only_pickle_weights_fails_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """The run would fetch the base's safetensors only, and find none after the work before its first load."""
    import huggingface_hub

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama"}))
    asked: list[list[str]] = []

    def download(repo_id, allow_patterns=None, **kwargs):
        asked.append(allow_patterns)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, **kwargs: ["config.json",
                                                                                       "pytorch_model.bin"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    config = tiny_config("nobody/pickles", write_tasks(tmp_path)[:2], tmp_path / "out", **SMALL)
    for dry in (["--dry-run"], []):
        _, err = run_cli(["experiment", _config_file(config, tmp_path), *dry], capsys, monkeypatch, expect=1)
        assert "only pickle (.bin) weights found" in err and "Hub repo nobody/pickles" in " ".join(err.split())
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and asked == [["config.json"]] * 2  # a check, not the weights


def test_an_unknown_executor_fails_a_dry_run_too_as_selects_does(tiny_base, tmp_path, capsys, monkeypatch):
    """The same names (mashup.config.ExecutorName), the same exit status and line as `mashup select --executor`."""
    config_file = _config_file(tiny_config(tiny_base, write_tasks(tmp_path)[:2], tmp_path / "out", **SMALL), tmp_path)
    for dry in (["--dry-run"], []):
        out, err = run_cli(["experiment", config_file, "--executor", "foo", *dry], capsys, monkeypatch, expect=2)
        assert err.strip() == "error: invalid value for --executor: Input should be 'local' or 'ray'; fix that option"
        assert not out
    assert not (tmp_path / "out").exists()


def test_an_occupied_out_dir_that_is_no_experiment_is_refused(tiny_base, tmp_path, capsys, monkeypatch):
    config_file = _config_file(tiny_config(tiny_base, write_tasks(tmp_path)[:2], tmp_path / "unused", **SMALL),
                               tmp_path)
    occupied = tmp_path / "mine"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("my notes")
    (occupied / "experiment.yaml").write_text("my own config, which a run would overwrite")
    for dry in (["--dry-run"], []):
        _, err = run_cli(["experiment", config_file, "--out", occupied, *dry], capsys, monkeypatch, expect=1)
        assert "not empty and holds no experiment" in err and "pick a new or empty dir" in err, err
    assert sorted(p.name for p in occupied.iterdir()) == ["experiment.yaml", "notes.txt"]
    for path in occupied.iterdir():
        path.unlink()
    run_cli(["experiment", config_file, "--out", occupied, "--dry-run"], capsys, monkeypatch)  # empty: fine


def test_off_a_terminal_progress_is_one_plain_line_per_unit_as_it_finishes(finished, tmp_path, capsys, monkeypatch):
    """stderr captured (not a TTY): every unit gets its own unclipped line, written as the unit finishes."""
    config = _copy(finished, tmp_path, max_steps=3)
    summary_out, err = run_cli(["experiment", _config_file(config, tmp_path), "--out", config.out, "--json"], capsys,
                               monkeypatch)
    lines = [line for line in err.splitlines() if re.match(r"\[\d+/12\] ", line)]
    assert lines[0].startswith("[0/12] 12 units planned") and len(lines) == 13
    assert "[1/12] already done eval/alpha/base (elapsed " in err
    assert re.search(r"\[\d+/12\] computed train/alpha/mashup_loss/lr=0.001/seed=0 \(\d+\.\d s; elapsed \d+m\d\ds, "
                     r"ETA \d+m\d\ds\)", err), err
    assert "…" not in err and json.loads(summary_out)["computed"] >= 1


def test_the_progress_lines_reach_the_file_before_the_run_ends():
    buffer = io.StringIO()
    with UnitProgress(Console(file=buffer, width=40)) as progress:
        progress.start(2, 60.0)
        progress.advance("train/a_very_long_task_name/mashup_loss/lr=0.0005/seed=0", 30.0, "reused")
        assert buffer.getvalue().splitlines()[-1].startswith(  # wider than the console: not clipped
            "[1/2] reused train/a_very_long_task_name/mashup_loss/lr=0.0005/seed=0 (elapsed ")
        progress.advance("eval/a/base", 30.0, "computed", 12.34)
        assert buffer.getvalue().splitlines()[-1].startswith("[2/2] computed eval/a/base (12.3 s; elapsed ")


def test_on_a_terminal_progress_stays_one_live_display():
    buffer = io.StringIO()
    with UnitProgress(Console(file=buffer, force_terminal=True, force_interactive=True, width=100)) as progress:
        progress.start(2, 60.0)
        progress.advance("eval/a/base", 30.0, "done")
    assert "[1/2]" not in buffer.getvalue() and "1/2 units" in buffer.getvalue()
