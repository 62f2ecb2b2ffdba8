"""The common multiple-choice format: loading user files, validation errors, splits, answer letters."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pytest

from mashup.data.schema import MCExample, carve_split, example_from_row, load_examples, parse_answer, sample
from mashup.errors import DataError

ROWS = [
    {"question": "Which is red?", "choices": ["apple", "sky"], "answer": 0},
    {"question": "Which is blue?", "choices": ["grass", "sky", "sun"], "answer": "B", "context": "Look up."},
    {"question": "Which is hot?", "choices": ["ice", "snow", "fire", "rain"], "answer": "2"},
]
EXPECTED = [
    MCExample("Which is red?", ("apple", "sky"), 0),
    MCExample("Which is blue?", ("grass", "sky", "sun"), 1, "Look up."),
    MCExample("Which is hot?", ("ice", "snow", "fire", "rain"), 2),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["question", "choices", "answer", "context"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "choices": json.dumps(row["choices"]), "context": row.get("context", "")})
    return path


def uniform(rows: list[dict]) -> list[dict]:
    """Same columns everywhere (Parquet / Arrow need one schema); answers as strings."""
    return [{"question": r["question"], "choices": r["choices"], "answer": str(r["answer"]),
             "context": r.get("context")} for r in rows]


def test_jsonl_csv_parquet_and_hf_dir_load_the_same(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    parquet = tmp_path / "d.parquet"
    pd.DataFrame(uniform(ROWS)).to_parquet(parquet)
    hf_dir = tmp_path / "hf"
    datasets.Dataset.from_list(uniform(ROWS)).save_to_disk(str(hf_dir))
    for path in (write_jsonl(tmp_path / "d.jsonl", ROWS), write_csv(tmp_path / "d.csv", ROWS), parquet, hf_dir):
        assert load_examples(path) == EXPECTED, path


@pytest.mark.parametrize(("row", "message"), [
    ({"choices": ["a", "b"], "answer": 0}, "missing field 'question'"),
    ({"question": "q", "answer": 0}, "missing field 'choices'"),
    ({"question": "q", "choices": ["a", "b"]}, "missing field 'answer'"),
    ({"question": "q", "choices": ["a"], "answer": 0}, "field 'choices' must be a list of at least 2"),
    ({"question": "q", "choices": ["a", 3], "answer": 0}, "field 'choices' must be a list"),
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, "field 'answer' is 2 but there are 2 choices"),
    ({"question": "q", "choices": ["a", "b"], "answer": "maybe"}, "field 'answer' must be an index or a letter"),
    ({"question": 5, "choices": ["a", "b"], "answer": 0}, "field 'question' must be a string"),
    ({"question": "q", "choices": ["a", "b"], "answer": 0, "context": 1}, "field 'context' must be a string"),
])
def test_malformed_jsonl_row_names_file_line_and_field(tmp_path: Path, row: dict, message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], row])
    with pytest.raises(DataError, match=message) as info:
        load_examples(path)
    assert f"in {path}:2" in str(info.value)


def test_malformed_csv_row_names_its_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bad.csv", [ROWS[0], {**ROWS[1], "answer": "Z"}])
    with pytest.raises(DataError, match=rf"field 'answer' is 'Z' but there are 3 choices in {path}:3"):
        load_examples(path)  # line 1 is the header


def test_csv_choices_must_be_a_json_list(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("question,choices,answer\nq,a;b,0\n")
    with pytest.raises(DataError, match="field 'choices' is a string, not a list"):
        load_examples(path)


def test_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=rf"invalid JSON .* in {path}:2"):
        load_examples(path)


def test_file_level_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="data file not found"):
        load_examples(tmp_path / "missing.jsonl")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="unknown task 'arc_esy'; did you mean arc_easy?"):  # a typo, not a path
        load_examples("arc_esy")
    with pytest.raises(DataError, match="data file not found in nosuch"):
        load_examples("nosuch")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        load_examples(tmp_path / "empty.jsonl")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported data format '.txt'"):
        load_examples(tmp_path / "data.txt")
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(uniform(ROWS))})
    splits.save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match="a DatasetDict, not one split"):
        load_examples(tmp_path / "dict")
    (tmp_path / "not_hf").mkdir()
    with pytest.raises(DataError, match="not a saved HF dataset"):
        load_examples(tmp_path / "not_hf")


@pytest.mark.parametrize(("value", "index"), [(0, 0), (3, 3), (2.0, 2), ("1", 1), (" 2 ", 2), ("A", 0), ("b", 1),
                                              ("D", 3)])
def test_parse_answer_accepts_indices_and_letters(value: object, index: int) -> None:
    assert parse_answer(value, 4, "here") == index


@pytest.mark.parametrize("value", [True, -1, 4, "E", "AB", 1.5, None, ""])
def test_parse_answer_rejects(value: object) -> None:
    with pytest.raises(DataError, match="in here"):
        parse_answer(value, 4, "here")


def test_choices_given_as_json_string_and_empty_context() -> None:
    example = example_from_row({"question": "q", "choices": '["x", "y"]', "answer": "B", "context": ""}, "w")
    assert example == MCExample("q", ("x", "y"), 1, None)


def examples(n: int) -> list[MCExample]:
    return [MCExample(f"q{i}", ("a", "b"), i % 2) for i in range(n)]


def test_carve_split_is_deterministic_disjoint_and_complete() -> None:
    data = examples(20)
    train, test = carve_split(data, 0.25, seed=3)
    assert (len(train), len(test)) == (15, 5)
    assert carve_split(data, 0.25, seed=3) == (train, test)
    assert carve_split(data, 0.25, seed=4) != (train, test)
    assert sorted(train + test, key=data.index) == data
    assert [data.index(e) for e in train] == sorted(data.index(e) for e in train)  # original order kept
    assert len(carve_split(data, 7, seed=0)[1]) == 7  # >= 1 is a count


@pytest.mark.parametrize("size", [0, 0.01, 20, 25])
def test_carve_split_refuses_an_empty_side(size: float) -> None:
    with pytest.raises(DataError, match="leaves an empty split"):
        carve_split(examples(20), size, seed=0)


def test_sample_is_seeded_and_caps_at_all() -> None:
    data = examples(10)
    assert sample(data, 4, seed=1) == sample(data, 4, seed=1) and len(set(sample(data, 4, seed=1))) == 4
    assert sample(data, 50, seed=1) == data
