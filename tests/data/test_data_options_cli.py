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
        assert f"--data {data} and --train {train} both name the train data" in line
        assert "--train FILE [--test FILE], not both" in line
    assert not out.exists()


def test_named_task_beside_test_is_refused(tmp_path: Path, tiny_base: Path, capsys, monkeypatch) -> None:
    test = write_mc_jsonl(tmp_path / "test.jsonl", 8)
    _, err = run_cli(["eval", "--base", tiny_base, "--data", "arc_easy", "--test", test], capsys, monkeypatch,
                     expect=1)
    assert "named task arc_easy, which has its own test split" in one_line_error(err)
