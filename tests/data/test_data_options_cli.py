"""`--data` beside `--train` / `--test` on the command line: one line naming both and what to pass, before any
work (the data it names was never read before)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_errors import one_line_error
from tests.conftest import write_mc_jsonl
from tests.test_cli import run_cli


@pytest.mark.parametrize("verb", ["eval", "train"])
def test_data_beside_train_is_refused_before_any_work(tmp_path: Path, tiny_base: Path, verb: str, capsys,
                                                      monkeypatch) -> None:
    train = write_mc_jsonl(tmp_path / "target.jsonl", 20)
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b'{"question": "caf\xe9"}\n')
    out = tmp_path / "out"
    extra = ["--out", out] if verb == "train" else []
    for data in (broken, "arc_easy"):
        _, err = run_cli([verb, "--base", tiny_base, "--data", data, "--train", train, *extra], capsys, monkeypatch,
                         expect=1)
        line = one_line_error(err)
        assert f"data {data} and train {train} both name the train data" in line
        assert "or train (and test), not both (--data, --train, --test on the command line)" in line
    assert not out.exists()


def test_one_file_spelled_two_ways_is_one_source(tmp_path: Path, tiny_base: Path, capsys, monkeypatch) -> None:
    write_mc_jsonl(tmp_path / "target.jsonl", 20)
    monkeypatch.chdir(tmp_path)
    for train in ("./target.jsonl", str(tmp_path / "target.jsonl")):
        run_cli(["eval", "--base", tiny_base, "--data", "target.jsonl", "--train", train, "--scoring", "letter",
                 "--max-length", 96], capsys, monkeypatch)


def test_a_config_file_naming_two_sources_says_which_file_and_field(tmp_path: Path, tiny_base: Path, capsys,
                                                                    monkeypatch) -> None:
    """An old run_config.yaml could hold data beside another train file (the command line then read only train):
    refused where the config loads, before any model, naming the file."""
    import yaml

    train = write_mc_jsonl(tmp_path / "target.jsonl", 20)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"base": str(tiny_base), "out": str(tmp_path / "out"),
                                      "data": {"data": str(tmp_path / "other.jsonl"), "train": str(train)}}))
    _, err = run_cli(["run", "--config", config], capsys, monkeypatch, expect=1)
    line = one_line_error(err)
    assert "both name the train data" in line and str(config) in line


def test_named_task_beside_test_is_refused(tmp_path: Path, tiny_base: Path, capsys, monkeypatch) -> None:
    test = write_mc_jsonl(tmp_path / "test.jsonl", 8)
    _, err = run_cli(["eval", "--base", tiny_base, "--data", "arc_easy", "--test", test], capsys, monkeypatch,
                     expect=1)
    assert "named task arc_easy, which has its own test split" in one_line_error(err)
