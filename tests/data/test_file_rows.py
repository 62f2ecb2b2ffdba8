"""A user's data file rows that would be scored wrongly or meaninglessly: blank questions or choices, repeated
choices, answers pandas writes as floats, a `choices` cell holding a JSON string; and `--data` given beside
`--train`/`--test`, where it would go unread."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from mashup.cli_data import DataOptions
from mashup.config import DataConfig
from mashup.data.schema import MCExample, example_from_row, load_examples
from mashup.data.target import load_target
from mashup.data.tasks import get_task, map_rows
from mashup.errors import DataError, MashupError
from tests.conftest import write_mc_jsonl
from tests.data.fixtures import csqa_row

GOOD = [{"question": "Which is red?", "choices": ["apple", "sky"], "answer": 0},
        {"question": "Which is blue?", "choices": ["grass", "sky", "sun"], "answer": 1}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def refused(path: Path, match: str) -> str:
    with pytest.raises(DataError, match=match) as info:
        load_examples(path)
    line = str(info.value)
    assert "\n" not in line
    return line


@pytest.mark.parametrize("choices", [["a", "b", "b", "c"], ["a", "b", "c", " b "]])
def test_repeated_choices_in_a_file_are_refused_naming_the_row(tmp_path: Path, choices: list[str]) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [*GOOD, {"question": "q", "choices": choices, "answer": 2}])
    line = refused(path, "holds 'b' twice")
    assert f"{path}:3" in line and "items 1 and" in line and "make the choices distinct" in line


def test_choices_differing_in_case_are_distinct(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "choices": ["Paris", "paris"], "answer": 0}])
    assert load_examples(path)[0].choices == ("Paris", "paris")


@pytest.mark.parametrize(("row", "match"), [
    ({"question": "", "choices": ["x", "b"], "answer": 0}, "field 'question' is empty"),
    ({"question": " \t", "choices": ["x", "b"], "answer": 0}, "field 'question' is empty"),
    ({"question": "q", "choices": ["", "b"], "answer": 0}, "field 'choices' item 0 is empty"),
    ({"question": "q", "choices": ["a", "  "], "answer": 0}, "field 'choices' item 1 is empty"),
])
def test_blank_question_or_choice_in_a_jsonl_file_is_refused(tmp_path: Path, row: dict, match: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [*GOOD, row])
    assert f"{path}:3" in refused(path, match)


def test_empty_question_cell_in_a_csv_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame([{"question": "q1", "choices": '["a", "b"]', "answer": 0},
                  {"question": None, "choices": '["a", "b"]', "answer": 1}]).to_csv(path, index=False)
    assert f"{path}:3" in refused(path, "field 'question' is empty")


def test_named_task_rows_skip_the_file_checks() -> None:
    row = csqa_row(0, key="C")
    row["choices"]["text"] = ["bank", "bank", "bank", "shop", "home"]  # as some published CommonsenseQA rows do
    [example] = map_rows(get_task("commonsense_qa"), [("raw row 1", row)])
    assert example.choices[:3] == ("bank",) * 3 and example.answer == 2


def test_a_pandas_csv_with_a_missing_answer_names_that_row(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    frame = pd.DataFrame([{"question": f"q{i}", "choices": json.dumps(["a", "b", "c", "d"]), "answer": i % 4}
                          for i in range(6)])
    frame.to_csv(path, index=False)  # all ints: read as before
    assert [ex.answer for ex in load_examples(path)] == [0, 1, 2, 3, 0, 1]
    frame.loc[3, "answer"] = float("nan")  # pandas now writes every answer as "0.0", "1.0", ... and row 3 empty
    frame.to_csv(path, index=False)
    assert "1.0" in path.read_text()
    assert f"{path}:5" in refused(path, "missing field 'answer'")
    frame.drop(index=3).to_csv(path, index=False)
    assert [ex.answer for ex in load_examples(path)] == [0, 1, 2, 0, 1]


@pytest.mark.parametrize(("answer", "index"), [("3.0", 3), (" 2.0 ", 2), ("1", 1), ("d", 3), (3.0, 3)])
def test_integral_answers_read_alike_in_text_and_numbers(answer: object, index: int) -> None:
    row = {"question": "q", "choices": ["a", "b", "c", "d"], "answer": answer}
    assert example_from_row(row, "here").answer == index


@pytest.mark.parametrize(("answer", "match"), [("3.5", "must be an index or a letter"), ("", "missing field"),
                                               (float("nan"), "missing field"), ("²", "must be an index")])
def test_non_integral_or_missing_answers_are_refused(answer: object, match: str) -> None:
    with pytest.raises(DataError, match=match):
        example_from_row({"question": "q", "choices": ["a", "b", "c", "d"], "answer": answer}, "here")


def test_a_choices_cell_holding_a_json_string_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [*GOOD, {"question": "q", "choices": '"ab"', "answer": 1}])
    line = refused(path, "field 'choices' is a JSON string")
    assert f"{path}:3" in line and "give a JSON list of strings" in line
    with open(tmp_path / "d.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["question", "choices", "answer"], ["q", '"ab"', "0"]])
    refused(tmp_path / "d.csv", "field 'choices' is a JSON string")


def test_a_choices_cell_holding_a_json_list_still_loads(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "choices": '["a", "b"]', "answer": "B"}])
    assert load_examples(path) == [MCExample("q", ("a", "b"), 1)]


# --- --data beside --train / --test ---

def test_data_with_a_different_train_file_is_refused(tmp_path: Path) -> None:
    train = write_mc_jsonl(tmp_path / "train.jsonl", 20)
    for data in ("arc_easy", str(tmp_path / "broken.jsonl")):
        with pytest.raises(ValidationError, match="both name the train data") as info:
            DataConfig(data=data, train=str(train))
        assert "or train (and test), not both" in str(info.value)
        with pytest.raises(MashupError, match="both name the train data"):
            DataOptions(data=data, train=str(train)).config()


def test_named_task_with_a_test_file_is_refused(tmp_path: Path) -> None:
    test = write_mc_jsonl(tmp_path / "test.jsonl", 8)
    with pytest.raises(ValidationError, match="named task arc_easy, which has its own test split"):
        DataConfig(data="arc_easy", test=str(test))
    with pytest.raises(MashupError, match="its own test split"):
        DataOptions(data="arc_easy", test=str(test)).given()


def test_train_alone_data_file_with_test_and_equal_data_and_train_still_load(tmp_path: Path) -> None:
    train = write_mc_jsonl(tmp_path / "train.jsonl", 20)
    test = write_mc_jsonl(tmp_path / "test.jsonl", 8, seed=1)
    alone = load_target(DataOptions(train=str(train), test=str(test)).config())
    assert (len(alone.train), len(alone.test)) == (20, 8)
    with_data = load_target(DataOptions(data=str(train), test=str(test)).config())  # train on all of the file
    assert with_data.train == alone.train and with_data.test == alone.test
    same = load_target(DataConfig(data=str(train), train=str(train), test=str(test)))  # as experiments build it
    assert same.train == alone.train
