"""Data files that cannot be read as given: one DataError line naming the file and the fix, or read as meant."""

from __future__ import annotations

import csv
import gzip
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mashup.cli import main
from mashup.config import DataConfig, EvalConfig, TrainConfig
from mashup.data.schema import MCExample, load_examples
from mashup.errors import DataError

ROWS = [
    {"question": "Which is red?", "choices": ["apple", "sky"], "answer": 0},
    {"question": "Which is blue?", "choices": ["grass", "sky", "sun"], "answer": "B"},
]
EXPECTED = [MCExample("Which is red?", ("apple", "sky"), 0), MCExample("Which is blue?", ("grass", "sky", "sun"), 1)]


def jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def one_line_error(path: Path, match: str) -> DataError:
    with pytest.raises(DataError, match=match) as info:
        load_examples(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    return info.value


def test_utf16_file_is_not_utf8_text(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(jsonl_text(ROWS), encoding="utf-16")
    error = one_line_error(path, "not UTF-8 text")
    assert error.fix is not None and "UTF-8" in error.fix


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv"])
def test_gzipped_file_says_decompress(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(jsonl_text(ROWS).encode()))
    error = one_line_error(path, "gzip-compressed")
    assert error.fix is not None and "decompress" in error.fix


def test_corrupt_parquet_is_one_data_error(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1garbagegarbage")
    one_line_error(path, "not a readable Parquet file")


def test_csv_and_jsonl_with_a_byte_order_mark_load(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    with open(path, "w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "choices", "answer"])
        writer.writerows([row["question"], json.dumps(row["choices"]), row["answer"]] for row in ROWS)
    assert load_examples(path) == EXPECTED
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(jsonl_text(ROWS), encoding="utf-8-sig")
    assert load_examples(jsonl) == EXPECTED


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
def test_json_array_of_rows_loads(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "d.json"
    path.write_text("\n  " + json.dumps(ROWS, indent=2), encoding=encoding)
    assert load_examples(path) == EXPECTED


def test_json_array_errors_name_the_row_or_line(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([ROWS[0], {"question": "q"}], indent=2))
    with pytest.raises(DataError, match=rf"missing field 'choices' in {path} row 2"):
        load_examples(path)
    path.write_text("[\n" + json.dumps(ROWS[0]) + ",\n{oops}\n]")
    with pytest.raises(DataError, match=rf"invalid JSON .* in {path}:3"):
        load_examples(path)


def test_pretty_printed_json_object_says_jsonl_is_expected(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS[0], indent=2))
    error = one_line_error(path, rf"invalid JSON .* in {path}:1")
    assert error.fix is not None and "JSONL" in error.fix and "JSON array" in error.fix
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps(ROWS[0], indent=2))
    error = one_line_error(jsonl, rf"invalid JSON .* in {jsonl}:1")
    assert error.fix is not None and "one whole JSON object (JSONL)" in error.fix


# Numeric options out of range: refused by the configs, so the CLI says one line and exits 2 before any work.

@pytest.mark.parametrize("fields", [
    {"max_length": 0}, {"max_length": -5}, {"max_train_examples": 0}, {"max_test_examples": -2},
    {"test_size": 0}, {"test_size": float("nan")}, {"validation_size": float("inf")},
])
def test_data_config_ranges(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=next(iter(fields))):
        DataConfig(data="x.jsonl", **fields)


@pytest.mark.parametrize("fields", [
    {"lr": -1}, {"lr": 0}, {"lr": float("nan")}, {"lr": float("inf")}, {"epochs": 0}, {"max_steps": 0},
    {"eval_every": 0}, {"micro_batch_size": 0}, {"lora_r": 0}, {"lora_alpha": 0}, {"lora_dropout": 1.0},
    {"weight_decay": -0.1}, {"warmup_ratio": 1.5}, {"max_grad_norm": 0},
])
def test_train_config_ranges(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=next(iter(fields))):
        TrainConfig(**fields)


def test_eval_config_keeps_zero_as_no_evaluation() -> None:
    assert EvalConfig(max_examples=0).max_examples == 0
    with pytest.raises(ValidationError, match="max_examples"):
        EvalConfig(max_examples=-1)


def cli_error(args: list[object], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the CLI expecting exit 2 (an invalid option value); return stderr."""
    monkeypatch.setattr(sys, "argv", ["mashup", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    return err


@pytest.mark.parametrize(("verb", "option"), [
    (["train", "--max-steps", "2", "--batch-size", "4"], ["--lr", "-1"]),
    (["train", "--batch-size", "4"], ["--epochs", "0"]),
    (["eval"], ["--max-test-examples", "-2"]),
    (["eval"], ["--max-length", "0"]),
    (["select", "--samples", "8"], ["--max-train-examples", "0"]),
])
def test_cli_out_of_range_option_is_one_line_exit_2(
        tmp_path: Path, tiny_base: Path, mc_file: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, verb: list[str], option: list[str]) -> None:
    out = ["--out", tmp_path / "out"] if verb[0] == "train" else []
    library = ["--library", tmp_path / "lib"] if verb[0] == "select" else []
    if library:
        from mashup.library import Library

        Library(tmp_path / "lib").add([])  # an existing (empty) library: the option, not the library, is wrong
    err = cli_error([*verb, "--base", tiny_base, "--data", mc_file, *option, *out, *library], capsys, monkeypatch)
    assert f"invalid value for {option[0]}: " in err and err.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()
