"""Bad input to `mashup switch`: one clear error, nothing written or lost."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mashup.config import TrainConfig
from mashup.errors import CheckpointError, DataError, MashupError
from mashup.switch.collect import collect, labelled_instances
from mashup.switch.config import (CandidateConfig, CollectConfig, GenerationConfig, RewardConfig, SwitchConfig,
                                  SwitchEvalConfig)
from mashup.switch.evaluate import evaluate_switch
from mashup.switch.rewards import RewardResult, reward_name
from mashup.switch.switcher import load_switcher
from mashup.switch.tasks import SwitchTask, load_switch_task, number_item
from mashup.switch.train import check_switcher_inputs, checked_collect_dirs, train_switcher
from tests.switch.helpers import generation
from tests.test_cli import run_cli
from tests.tiny import copy_with_nan, save_tiny_base

collect_module = importlib.import_module("mashup.switch.collect")
TASK = SwitchTask("tiny", "number", [number_item(f"What is {i} + 1?", str(i + 1)) for i in range(6)],
                  [number_item("What is 9 + 1?", "10")])
CONFIG = CollectConfig(task="tiny", instances=4, rollouts=1, seed=1)


def _switch_config(tiny_base: Path, other_base: Path, **generation_kwargs: object) -> SwitchConfig:
    return SwitchConfig(candidates=[CandidateConfig(model=str(tiny_base), role="aligned", name="a"),
                                    CandidateConfig(model=str(other_base), name="b")],
                        generation=generation(**{"segment_tokens": 3, "max_new_tokens": 12, **generation_kwargs}))


@pytest.fixture()
def finished(trio, tiny_base, other_base, tmp_path, monkeypatch) -> Path:
    """A finished collect of 4 labelled instances (a reward that rarely ties)."""
    monkeypatch.setattr(collect_module, "build_reward",
                        lambda *a: lambda item, text: RewardResult(float(len(text) % 7), True))
    collect(_switch_config(tiny_base, other_base), CONFIG, tmp_path / "col", candidates=trio[:2], task=TASK)
    return tmp_path / "col"


def _spoil_line(path: Path, number: int, text: str) -> list[str]:
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1] = text
    path.write_text("".join(lines))
    return lines


# F1: readers never truncate; a bad middle line is an error naming file:line
def test_a_bad_middle_line_is_an_error_and_the_log_is_kept(finished, trio, tiny_base, other_base) -> None:
    log = finished / "rollouts.jsonl"
    lines = _spoil_line(log, 2, '{"index": 1, garbage\n')
    with pytest.raises(MashupError, match=r"rollouts.jsonl:2"):
        labelled_instances(finished)
    with pytest.raises(MashupError, match=r"rollouts.jsonl:2"):  # a resuming collect does not cut it either
        collect(_switch_config(tiny_base, other_base), CONFIG, finished, candidates=trio[:2], task=TASK)
    assert log.read_text() == "".join(lines)


def test_a_reader_leaves_a_torn_last_line_alone(finished) -> None:
    log = finished / "rollouts.jsonl"
    text = log.read_text() + '{"index": 4, "torn'
    log.write_text(text)
    with pytest.raises(MashupError, match=r"rollouts.jsonl:5"):
        labelled_instances(finished)
    assert log.read_text() == text


# F2: train checks its collect dirs against --config
def test_train_refuses_a_collect_of_other_candidates(finished, tiny_base, other_base, expert_lora, tmp_path) -> None:
    swapped = _switch_config(other_base, tiny_base)
    three = SwitchConfig(candidates=[*_switch_config(tiny_base, other_base).candidates,
                                     CandidateConfig(model=str(tiny_base), adapter=str(expert_lora), name="c")])
    for config in (swapped, three):
        with pytest.raises(MashupError, match="other candidates"):
            train_switcher(config, [finished], tmp_path / "sw", TrainConfig())
    assert not (tmp_path / "sw").exists()


def test_train_refuses_labels_beyond_the_candidates(finished, tiny_base, other_base, tmp_path) -> None:
    log = finished / "rollouts.jsonl"
    record = json.loads(log.read_text().splitlines()[0])
    _spoil_line(log, 1, json.dumps({**record, "label": 5}) + "\n")
    with pytest.raises(MashupError, match="do not all name one of the 2 candidates"):
        train_switcher(_switch_config(tiny_base, other_base), [finished], tmp_path / "sw", TrainConfig())


def test_train_data_paths(finished, tiny_base, other_base, tmp_path, monkeypatch) -> None:
    config = _switch_config(tiny_base, other_base)
    monkeypatch.chdir(tmp_path)
    assert checked_collect_dirs(config, [finished, Path("col"), Path("col/../col")]) == [finished]
    with pytest.raises(MashupError, match="no such collect dir"):
        checked_collect_dirs(config, [tmp_path / "typo"])
    with pytest.raises(MashupError, match="not a dir"):
        checked_collect_dirs(config, [finished / "summary.json"])


def test_train_checks_its_output_dir_before_any_work(finished, tiny_base, other_base, tmp_path, monkeypatch) -> None:
    config = _switch_config(tiny_base, other_base)
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "keep.txt").write_text("keep me")
    monkeypatch.setattr("mashup.switch.train.load_tokenizer", lambda *a: pytest.fail("work began before the checks"))
    with pytest.raises(MashupError, match="already exists and is not empty"):
        check_switcher_inputs(config, [finished], tmp_path / "sw")
    inputs = check_switcher_inputs(config, [finished], tmp_path / "free")
    assert len(inputs.instances) >= 2 and inputs.base == str(tiny_base)
    assert (tmp_path / "sw" / "keep.txt").read_text() == "keep me" and not (tmp_path / "free").exists()


# F3: eval rejects systems it cannot run and nonsense sample sizes
def test_eval_refuses_unknown_and_unavailable_systems(trio, tiny_base, other_base) -> None:
    config = _switch_config(tiny_base, other_base)
    with pytest.raises(MashupError, match="unknown system 'bogus'.*alone:a, alone:b, random"):
        evaluate_switch(config, SwitchEvalConfig(task="tiny", systems=["bogus"]), candidates=trio[:2], task=TASK)
    with pytest.raises(MashupError, match="'switcher-trained' does not apply here"):
        evaluate_switch(config, SwitchEvalConfig(task="tiny", systems=["switcher-trained"]), candidates=trio[:2],
                        task=TASK)


@pytest.mark.parametrize("n", [-3, 0])
def test_eval_max_examples_must_be_positive(n: int) -> None:
    with pytest.raises(ValidationError, match="greater than 0"):
        SwitchEvalConfig(task="tiny", max_examples=n)


# F4: a collect that cannot start writes nothing, so the corrected rerun is not refused
def test_a_collect_that_cannot_start_leaves_no_dir(trio, tiny_base, other_base, tmp_path) -> None:
    config, out = _switch_config(tiny_base, other_base), tmp_path / "col"
    with pytest.raises(DataError, match="data file not found in nosuch"):
        collect(config, CONFIG.model_copy(update={"task": "nosuch"}), out, candidates=trio[:2])
    with pytest.raises(MashupError, match="unknown reward"):
        collect(config, CONFIG.model_copy(update={"reward": RewardConfig(name="bogus")}), out, candidates=trio[:2],
                task=TASK)
    with pytest.raises(MashupError, match="no switch to label"):
        collect(_switch_config(tiny_base, other_base, max_new_tokens=6), CONFIG, out, candidates=trio[:2], task=TASK)
    assert not out.exists()


# F5: bad task files are one DataError naming the file (and line)
@pytest.mark.parametrize("text, match", [
    ('{"question": "a", "answer": 1}\n{"question": oops\n', r"invalid JSON.*t\.jsonl:2"),
    ('5\n6\n', r"not an object.*t\.jsonl:1"),
    ('{"question": "a", "answer": 1}\n', r"at least 2 rows.*t\.jsonl"),
    ('', r"at least 2 rows.*t\.jsonl"),
    ('{"question": "a", "answer": 1}\n{"question": "b"}\n', r"'question' and 'answer'.*t\.jsonl:2"),
])
def test_bad_task_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        load_switch_task(str(path))


@pytest.mark.parametrize("row, match", [
    ({"question": "q", "choices": ["a", "b", "b"], "answer": 2}, r"holds 'b' twice.*t\.jsonl:2"),
    ({"question": " ", "choices": ["a", "b"], "answer": 0}, r"'question' is empty.*t\.jsonl:2"),
])
def test_a_multiple_choice_task_file_gets_the_checks_of_a_data_file(tmp_path: Path, row: dict, match: str) -> None:
    """As `mashup eval --data` reads the file: duplicate choices (a cloze score could never pick a later copy)
    and blank texts are refused."""
    path = tmp_path / "t.jsonl"
    good = {"question": "q", "choices": ["a", "b"], "answer": 0}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=match):
        load_switch_task(str(path))


def test_a_task_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"question": "\xff", "answer": 1}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        load_switch_task(str(path))


# F7: 0 from the command line is validated, not taken for "not given"
def test_zero_segment_tokens_is_refused(tmp_path, tiny_base, capsys, monkeypatch) -> None:
    path = tmp_path / "switch.yaml"
    path.write_text(yaml.safe_dump({"candidates": [{"model": str(tiny_base), "role": "aligned", "name": "a"},
                                                   {"model": str(tiny_base), "name": "b"}]}))
    _, err = run_cli(["switch", "generate", "--config", path, "hi", "--segment-tokens", 0], capsys, monkeypatch,
                     expect=2)
    assert "invalid value for --segment-tokens: " in err and "greater than 0" in err and err.strip().count("\n") == 0


# F14: a switcher adapter only goes on the base it was trained on
def test_a_switcher_adapter_on_another_base_is_refused(tiny_base, expert_lora, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MASHUP_CACHE", str(tmp_path / "cache"))
    other = save_tiny_base(tmp_path / "other", seed=3)  # the same shapes: PEFT alone would load it
    with pytest.raises(CheckpointError, match="trained on base"):
        load_switcher(other, 2, adapter=expert_lora)
    copy = shutil.copytree(tiny_base, tmp_path / "copy")  # the same base under another path is fine
    assert load_switcher(copy, 2, adapter=expert_lora).n == 2


# minor: rewards that cannot score the task's answers, non-finite temperatures
def test_a_number_reward_on_a_choice_task_is_refused() -> None:
    task = SwitchTask("quiz", "choice", [], [])
    with pytest.raises(MashupError, match="scores number answers"):
        reward_name(RewardConfig(name="number_match"), task)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_temperatures_must_be_finite(value: float) -> None:
    with pytest.raises(ValidationError, match="finite"):
        CollectConfig(task="tiny", temperature=value)
    with pytest.raises(ValidationError, match="finite"):
        GenerationConfig(temperature=value)


def test_a_collect_killed_while_starting_starts_afresh(trio, tiny_base, other_base, tmp_path, monkeypatch) -> None:
    """Killed before its last config write, a start leaves the switch config (and the version, or a temp file):
    the collect config is written last, so a rerun starts afresh instead of calling the dir not a collect."""
    from mashup.config import save_config

    monkeypatch.setattr(collect_module, "build_reward",
                        lambda *a: lambda item, text: RewardResult(float(len(text) % 7), True))
    config, out = _switch_config(tiny_base, other_base), tmp_path / "col"
    out.mkdir()
    save_config(config, out / collect_module.SWITCH_CONFIG)
    (out / ".collect_config.yaml.123.tmp").write_text("rollouts: ")  # a config write cut short
    summary = collect(config, CONFIG, out, candidates=trio[:2], task=TASK)
    assert summary["instances"] == CONFIG.instances and (out / collect_module.COLLECT_CONFIG).is_file()
    assert not list(out.glob(".*.tmp"))


# a task meant as a file that is not there is "not found", not an unknown task name
@pytest.mark.parametrize("name", ["mine_missing.jsonl", "questions.json", "data/questions"])
def test_a_missing_task_file_is_not_found(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=rf"^data file not found in {name}; check the path"):
        load_switch_task(name)
    with pytest.raises(DataError, match="data file not found in nosuch"):  # as `mashup eval --data` says
        load_switch_task("nosuch")
    with pytest.raises(DataError, match="unknown task 'arithmetc'; did you mean arithmetic?"):
        load_switch_task("arithmetc")


def test_a_task_is_read_from_any_format_eval_reads(tmp_path: Path, monkeypatch) -> None:
    """CSV, Parquet or a saved HF dataset dir, as `mashup eval --data` reads them, not only JSONL."""
    import datasets

    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(10)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "rows.csv"))
    monkeypatch.chdir(tmp_path)
    for name in ("saved", "rows.csv"):
        task = load_switch_task(name)
        assert task.kind == "number" and len(task.train) + len(task.test) == 10
    with pytest.raises(DataError, match=r"^data file not found in missing.csv"):
        load_switch_task("missing.csv")


# a reward given by name alone, in every config that has one
def test_a_reward_may_be_given_by_name() -> None:
    import mashup.switch.config as config_module

    with_reward = [model for model in vars(config_module).values() if isinstance(model, type)
                   and issubclass(model, config_module.StageConfig) and "reward" in model.model_fields]
    assert {m.__name__ for m in with_reward} == {"CollectConfig", "SwitchEvalConfig"}
    for model in with_reward:
        assert model(task="tiny", reward="number_closeness").reward == RewardConfig(name="number_closeness")
        assert model(task="tiny", reward={"name": "choice_cloze", "mode": "margin"}).reward.mode == "margin"
        assert model.model_validate(yaml.safe_load("task: tiny\nreward: number_match\n")).reward.name == "number_match"
        assert model.model_validate(yaml.safe_load("task: tiny\nreward:\n")).reward == RewardConfig()  # empty


# a reward that cannot score the task is refused before any model loads
@pytest.mark.parametrize("reward, match", [("bogus", "unknown reward 'bogus'"), ("choice_cloze", "scores choice"),
                                           ({"name": "number_closeness", "mode": "margin"}, "applies to choice_cloze")])
def test_a_bad_reward_is_refused_before_the_models_load(reward, match, tiny_base, other_base, tmp_path,
                                                        monkeypatch) -> None:
    evaluate_module = importlib.import_module("mashup.switch.evaluate")
    for module in (collect_module, evaluate_module):
        monkeypatch.setattr(module, "load_candidates", lambda *a, **k: pytest.fail("models loaded before the check"))
    config = _switch_config(tiny_base, other_base)
    reward_config = RewardConfig.model_validate(reward if isinstance(reward, dict) else {"name": reward})
    with pytest.raises(MashupError, match=match):
        collect(config, CONFIG.model_copy(update={"reward": reward_config}), tmp_path / "col", task=TASK)
    with pytest.raises(MashupError, match=match):
        evaluate_switch(config, SwitchEvalConfig(task="tiny", reward=reward), task=TASK)  # type: ignore[arg-type]
    assert not (tmp_path / "col").exists()


def test_nan_weights_in_a_candidate_or_the_switcher_are_one_error(tiny_base, expert_lora, tmp_path) -> None:
    """A NaN weight would write garbage text without failing: refused when the model loads, naming the dir."""
    from mashup.switch.candidates import load_candidate

    broken_base = copy_with_nan(tiny_base, tmp_path / "nan-base")
    with pytest.raises(CheckpointError, match="NaN or inf") as error:
        load_candidate(CandidateConfig(model=str(broken_base), name="a"))
    assert str(broken_base) in error.value.line()
    broken_adapter = copy_with_nan(expert_lora, tmp_path / "nan-lora")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        load_candidate(CandidateConfig(model=str(tiny_base), adapter=str(broken_adapter), name="a"))
    with pytest.raises(CheckpointError, match="NaN or inf"):
        load_switcher(str(broken_base), 2)


def test_a_checkpoint_candidate_in_a_library_that_does_not_exist_says_so(tmp_path) -> None:
    from mashup.switch.candidates import load_candidates

    with pytest.raises(MashupError, match="library dir not found") as error:
        load_candidates([CandidateConfig(checkpoint="abc123", name="a")], library=str(tmp_path / "no-such-lib"))
    assert str(tmp_path / "no-such-lib") in error.value.line()


def test_a_checkpoint_candidate_whose_dir_was_deleted_says_so(tmp_path, expert_lora) -> None:
    from mashup.errors import LibraryError
    from mashup.library import Library
    from mashup.switch.candidates import load_candidates

    copy = shutil.copytree(expert_lora, tmp_path / "gone")
    record = Library(tmp_path / "lib").add([copy])[0]
    shutil.rmtree(copy)
    with pytest.raises(LibraryError, match=f"checkpoint {record.id}'s dir .*gone is missing") as error:
        load_candidates([CandidateConfig(checkpoint=record.id, name="a")], library=str(tmp_path / "lib"))
    assert f"`mashup library remove {record.id}`" in error.value.line() and "PEFT adapter" not in error.value.line()


def test_the_reward_is_checked_once(trio, tiny_base, other_base, tmp_path, monkeypatch) -> None:
    """Before the models load, and not again when it is built."""
    from mashup.switch import rewards

    checks: list[str] = []

    def counted(config: RewardConfig, task: SwitchTask) -> str:
        checks.append(config.name)
        return reward_name(config, task)

    evaluate_module = importlib.import_module("mashup.switch.evaluate")
    for module in (rewards, collect_module, evaluate_module):
        monkeypatch.setattr(module, "reward_name", counted)
    collect(_switch_config(tiny_base, other_base), CONFIG.model_copy(update={"instances": 1}), tmp_path / "col",
            candidates=trio[:2], task=TASK)
    assert checks == ["auto"]
    evaluate_switch(_switch_config(tiny_base, other_base), SwitchEvalConfig(task="tiny", max_examples=1,
                                                                            systems=["alone:a"]),
                    candidates=trio[:2], task=TASK)
    assert checks == ["auto", "auto"]


@pytest.mark.parametrize("config", ["GenerationConfig", "CollectConfig"])
def test_a_negative_seed_is_refused(config):
    from mashup.switch import config as switch_config

    fields = {"task": "t"} if config == "CollectConfig" else {}
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        getattr(switch_config, config)(seed=-1, **fields)
