"""What train and run outputs record about their inputs holds from any working dir: local paths are written
absolute (an adapter's base, the data, a run's out and the library it read), named tasks and models as given; so
PEFT and `library add` find an adapter's base, and a run's run_config.yaml reruns it from elsewhere."""

import json
import shutil
from pathlib import Path

import yaml

from mashup.library import Library
from tests.test_cli import run_cli


def _work_dir(tmp_path, tiny_base, mc_file) -> Path:
    """A project dir holding the base and the data, to be named relative to it."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(tiny_base, work / "base")
    shutil.copy(mc_file, work / "target.jsonl")
    return work


def test_train_records_absolute_paths(tmp_path, tiny_base, mc_file, capsys, monkeypatch):
    work = _work_dir(tmp_path, tiny_base, mc_file)
    monkeypatch.chdir(work)
    run_cli(["train", "--base", "base", "--data", "target.jsonl", "--out", "trained", "--max-steps", 1,
             "--batch-size", 4, "--scoring", "letter", "--max-length", 96], capsys, monkeypatch)
    adapter = work / "trained" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(work / "base")
    data = yaml.safe_load((work / "trained" / "data_config.yaml").read_text())
    assert data["data"] == str(work / "target.jsonl")
    assert json.loads((work / "trained" / "result.json").read_text())["out"] == str(work / "trained")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (record,) = Library(tmp_path / "lib").add([adapter])
    assert record.base_model == str(work / "base") and record.base_identity is not None


def test_a_named_task_is_recorded_by_name(tmp_path):
    from mashup.config import DataConfig
    from mashup.data.target import recorded_data_config

    assert recorded_data_config(DataConfig(data="arc_easy")) == DataConfig(data="arc_easy")
    assert recorded_data_config(DataConfig(data="nosuch.jsonl")).data == "nosuch.jsonl"  # nothing there: as given


def test_a_file_targets_name_is_recorded_as_it_was_derived(tmp_path, monkeypatch):
    """A file called train.jsonl is named after its dir: the working dir's, when it is given bare. Recorded
    absolute, the path alone would name it after the dir above; so the name is written out."""
    from mashup.config import DataConfig
    from mashup.data.target import load_target, recorded_data_config
    from tests.conftest import write_mc_jsonl

    project = tmp_path / "proj"
    project.mkdir()
    write_mc_jsonl(project / "train.jsonl", 20)
    monkeypatch.chdir(project)
    config = DataConfig(data="train.jsonl")
    assert load_target(config).name == "train"  # a bare file name: no dir to name it after
    recorded = recorded_data_config(config)
    assert recorded.data == str(project / "train.jsonl")
    monkeypatch.chdir(tmp_path)
    assert load_target(recorded).name == "train"


def test_a_runs_config_reruns_it_from_another_dir(tmp_path, tiny_base, tiny_loras, mc_file, capsys, monkeypatch):
    work = _work_dir(tmp_path, tiny_base, mc_file)
    Library(work / "lib").add(tiny_loras[:2])
    monkeypatch.chdir(work)
    monkeypatch.setenv("MASHUP_LIBRARY", "lib")
    args = ["--samples", 4, "--k", 2, "--max-steps", 1, "--batch-size", 4, "--scoring", "letter", "--max-length", 96,
            "--no-register"]
    run_cli(["run", "--base", "base", "--data", "target.jsonl", "--out", "run1", *args], capsys, monkeypatch)
    recorded = yaml.safe_load((work / "run1" / "run_config.yaml").read_text())
    assert recorded["base"] == str(work / "base") and recorded["data"]["data"] == str(work / "target.jsonl")
    assert recorded["library"] == str(work / "lib") and recorded["out"] == str(work / "run1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MASHUP_LIBRARY")
    run_cli(["run", "--config", work / "run1" / "run_config.yaml", "--out", "run2"], capsys, monkeypatch)
    assert (elsewhere / "run2" / "summary.json").is_file()


def test_a_run_writes_where_its_record_says(tmp_path, tiny_base, tiny_loras, mc_file, capsys, monkeypatch):
    """`out: ~/runs/x` is the home dir's runs/x (as recorded), not a dir called ~ in the working dir."""
    work = _work_dir(tmp_path, tiny_base, mc_file)
    Library(work / "lib").add(tiny_loras[:2])
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run_cli(["run", "--base", "base", "--data", "target.jsonl", "--out", "~/runs/x", "--library", "lib", "--samples",
             4, "--max-steps", 1, "--batch-size", 4, "--scoring", "letter", "--max-length", 96, "--no-register"],
            capsys, monkeypatch)
    out = tmp_path / "home" / "runs" / "x"
    assert not (work / "~").exists() and (out / "summary.json").is_file()
    assert yaml.safe_load((out / "run_config.yaml").read_text())["out"] == str(out)
    assert json.loads((out / "mashup" / "result.json").read_text())["out"] == str(out / "mashup")


def test_a_recorded_config_run_on_other_data_takes_that_datas_name(tmp_path):
    """A run's run_config.yaml names its target; given with --data of another target, the name is that one's."""
    from mashup.cli_run import run_config

    config = tmp_path / "run_config.yaml"
    config.write_text(yaml.safe_dump({"base": "b", "out": "o", "data": {"data": str(tmp_path / "foo.jsonl"),
                                                                       "name": "foo"}}))
    assert run_config(config, {}, {"data": {"data": "sciq"}}).data.name is None
    assert run_config(config, {}, {"data": {"data": "sciq", "name": "mine"}}).data.name == "mine"
    assert run_config(config, {}, {}).data.name == "foo"


def test_a_target_given_as_the_working_dir_is_named_after_it(tmp_path, monkeypatch):
    from mashup.config import DataConfig
    from mashup.data.target import file_target_name

    (tmp_path / "mydata").mkdir()
    monkeypatch.chdir(tmp_path / "mydata")
    assert file_target_name(DataConfig(data=".")) == "mydata"


def test_a_target_given_as_the_parent_dir_is_named_after_it(tmp_path, monkeypatch):
    from mashup.config import DataConfig
    from mashup.data.target import file_target_name

    (tmp_path / "mydata" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "mydata" / "sub")
    assert [file_target_name(DataConfig(data=d)) for d in ("..", "../", "../sub/..")] == ["mydata"] * 3


def test_a_test_file_or_the_same_data_keeps_a_configs_name(tmp_path):
    from mashup.cli_run import run_config

    data = tmp_path / "copy_of_sciq.jsonl"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"base": "b", "out": "o", "data": {"data": str(data), "name": "sciq"}}))
    assert run_config(config, {}, {"data": {"test": str(tmp_path / "heldout.jsonl")}}).data.name == "sciq"
    assert run_config(config, {}, {"data": {"data": str(data)}}).data.name == "sciq"
