"""Target splits: the validation split carved from train for model selection, and file targets' names."""

from __future__ import annotations

import pytest

from mashup.config import DataConfig, EvalConfig
from mashup.data.target import load_target
from mashup.errors import DataError
from mashup.verbs import eval_split
from tests.conftest import write_mc_jsonl


def _key(example) -> tuple:
    return example.question, tuple(example.choices)


def test_validation_is_carved_from_train_only_and_is_stable(tmp_path):
    data = write_mc_jsonl(tmp_path / "target.jsonl", 50)
    plain = load_target(DataConfig(data=str(data)))
    carved = load_target(DataConfig(data=str(data), validation_size=0.25))
    assert plain.validation == [] and plain.test == carved.test
    assert len(carved.validation) == 10 and len(carved.train) == 30
    assert {_key(e) for e in carved.train} | {_key(e) for e in carved.validation} == {_key(e) for e in plain.train}
    assert not {_key(e) for e in carved.train} & {_key(e) for e in carved.validation}
    capped = load_target(DataConfig(data=str(data), validation_size=0.25, max_train_examples=5))
    assert capped.validation == carved.validation and len(capped.train) == 5  # the cap never moves rows into it
    assert carved.fingerprint == plain.fingerprint  # the task's identity does not depend on how it is split


def test_eval_split_reads_the_validation_split(tmp_path):
    data = write_mc_jsonl(tmp_path / "target.jsonl", 50)
    target = load_target(DataConfig(data=str(data), validation_size=8))
    assert eval_split(target, EvalConfig(split="validation")) == target.validation
    with pytest.raises(DataError, match="no validation split"):
        eval_split(load_target(DataConfig(data=str(data))), EvalConfig(split="validation"))
    with pytest.raises(DataError, match="validation size 40 leaves an empty split"):
        load_target(DataConfig(data=str(data), validation_size=40))


def test_a_file_target_called_train_is_named_after_its_directory(tmp_path):
    (tmp_path / "my_task").mkdir()
    train = write_mc_jsonl(tmp_path / "my_task" / "train.jsonl", 20)
    test = write_mc_jsonl(tmp_path / "my_task" / "test.jsonl", 8, seed=1)
    assert load_target(DataConfig(data=str(train), train=str(train), test=str(test))).name == "my_task"
    assert load_target(DataConfig(data=str(train), name="custom")).name == "custom"
