"""Merge weights that have no meaningful result are refused before anything is written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from mashup.cli import main
from mashup.config import MergeConfig
from mashup.errors import MergeError
from mashup.merging import merge_checkpoints
from mashup.merging.plan import build_plan
from tests.merging.helpers import records


@pytest.mark.parametrize("weights", [[float("nan"), 1.0], [float("inf"), 1.0], [1.0, float("-inf")], [0.0, 0.0]])
def test_non_finite_or_all_zero_weights_are_invalid(weights: list[float]) -> None:
    with pytest.raises(ValidationError, match="weights"):
        MergeConfig(weights=weights)


def test_non_finite_lambda_is_invalid() -> None:
    with pytest.raises(ValidationError, match="lambda"):
        MergeConfig.model_validate({"method": "task_arithmetic", "lambda": float("nan")})


@pytest.mark.parametrize("config", [
    MergeConfig(weights=[1.0, -1.0]),
    MergeConfig(method="task_arithmetic", weights=[0.5, -0.5], normalize=True),
    MergeConfig(method="fisher", weights=[1.0, -1.0]),
    MergeConfig(method="regmean", weights=[2.0, -2.0]),
])
def test_weights_summing_to_zero_are_refused_where_the_method_divides_by_the_sum(
        tiny_loras: list[Path], tmp_path: Path, config: MergeConfig) -> None:
    out = tmp_path / "out"
    with pytest.raises(MergeError, match=rf"sum to 0, and {config.method} divides by their sum"):
        merge_checkpoints(records(tiny_loras[:2]), config, out)
    assert not out.exists()


@pytest.mark.parametrize("config", [
    MergeConfig(weights=[1.0, -1.0], normalize=False),
    MergeConfig(method="task_arithmetic", weights=[1.0, -1.0]),
    MergeConfig(method="ties", weights=[1.0, -1.0]),
])
def test_weights_summing_to_zero_stay_allowed_where_nothing_divides_by_the_sum(
        tiny_loras: list[Path], config: MergeConfig) -> None:
    assert build_plan(records(tiny_loras[:2]), config).weights == [1.0, -1.0]


def run_cli(args: list[object], capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mashup", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("weights", "code", "message"), [
    (["nan", "1"], 2, "--weights (value 1): Input should be a finite number"),
    (["0", "0"], 2, "all weights are 0"),
    (["1", "-1"], 1, "sum to 0, and average divides by their sum"),
])
def test_cli_bad_weights_are_one_line_and_write_nothing(
        tmp_path: Path, tiny_loras: list[Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        weights: list[str], code: int, message: str) -> None:
    lib, out = tmp_path / "lib", tmp_path / "merged"
    added = run_cli(["library", "add", *tiny_loras[:2], "--library", lib, "--json"], capsys, monkeypatch)
    ids = json.loads(added[1])
    result = run_cli(["merge", "--checkpoints", *ids, "--weights", *weights, "--out", out, "--library", lib],
                     capsys, monkeypatch)
    assert result[0] == code and message in result[2] and result[2].strip().count("\n") == 0, result
    assert not out.exists()


def test_merging_a_checkpoint_whose_weights_changed_since_registration_is_refused(tmp_path: Path,
                                                                                 tiny_loras: list[Path]) -> None:
    """select leaves a stale checkpoint out; merge named it by id and merged the bytes there now."""
    import shutil

    from mashup.config import MergeConfig
    from mashup.errors import LibraryError
    from mashup.library import Library
    from mashup.verbs import merge

    library = Library(tmp_path / "lib")
    copies = [shutil.copytree(path, tmp_path / path.name) for path in tiny_loras[:2]]
    ids = [record.id for record in library.add(copies)]
    weights = copies[1] / "adapter_model.safetensors"
    weights.write_bytes((tiny_loras[2] / "adapter_model.safetensors").read_bytes())
    with pytest.raises(LibraryError, match=f"checkpoint {ids[1]} is stale: weights changed since registration"):
        merge(ids, MergeConfig(), tmp_path / "merged", library.directory)
    assert not (tmp_path / "merged").exists()


def test_merging_a_checkpoint_whose_dir_was_deleted_says_so(tmp_path: Path, tiny_loras: list[Path], capsys,
                                                            monkeypatch) -> None:
    """Not "stale ... register it again": there is nothing left at its path to register."""
    import shutil

    from mashup.library import Library

    library = Library(tmp_path / "lib")
    copies = [shutil.copytree(path, tmp_path / path.name) for path in tiny_loras[:2]]
    ids = [record.id for record in library.add(copies)]
    shutil.rmtree(copies[1])
    monkeypatch.setattr(sys, "argv", ["mashup", "merge", "--checkpoints", *ids, "--out", str(tmp_path / "merged"),
                                      "--library", str(library.directory)])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.strip().count("\n") == 0
    assert f"checkpoint {ids[1]}'s dir {copies[1]} is missing (deleted or moved since it was registered)" in err
    assert f"`mashup library remove {ids[1]}`" in err and "stale" not in err
    assert not (tmp_path / "merged").exists()
