"""Bad input to `mashup experiment` and `mashup report`: one clear line up front, never silently wrong results."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pytest
import yaml

from mashup.errors import MashupError
from mashup.experiment import load_experiment_config, run_experiment, write_report
from mashup.experiment.store import ResultStore, unit_file_name
from mashup.library import Library
from tests.experiment.helpers import tiny_config, write_tasks

SMALL = dict(seeds=1, lrs=[1e-3], max_steps=2, eval_every=1, arms=["scratch", "mashup_loss"], samples_sweep=[],
             merge_grid=None, k=1)
SCRATCH_UNIT = "train/alpha/scratch/lr=0.001/seed=0"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_base):
    """One dir run twice: with lr 1e-3, then with lr 5e-3 (each trains its own sources)."""
    root = tmp_path_factory.mktemp("bad_input")
    tasks = write_tasks(root)[:2]
    first = tiny_config(tiny_base, tasks, root / "out", **SMALL)
    run_experiment(first)
    shutil.copytree(root / "out", root / "first")
    second = tiny_config(tiny_base, tasks, root / "out", **{**SMALL, "lrs": [5e-3]})
    run_experiment(second)
    return first.model_copy(update={"out": str(root / "first")}), second


# --- F10: a rerun with a changed config ranks only the sources its own plan trained ---

def test_a_changed_config_in_a_used_dir_ranks_only_its_own_sources(two_runs):
    _, second = two_runs
    records = ResultStore(second.out).records()
    sources = {records[f"source/{task}/source"]["result"]["checkpoint_id"] for task in ("alpha", "beta")}
    assert len(Library(Path(second.out) / "library").list()) == 4  # the first run's sources are kept (nothing lost)
    for target, other in (("alpha", "beta"), ("beta", "alpha")):
        ranking = records[f"select/{target}/samples:8"]["result"]["ranking"]
        assert [row["id"] for row in ranking] == [records[f"source/{other}/source"]["result"]["checkpoint_id"]]
        assert set(records[f"merge/{target}/mashup_loss"]["result"]["checkpoint_ids"]) <= sources


# --- F9: config values that cannot work fail at load, naming the file and the field ---

@pytest.mark.parametrize("change, field", [
    ({"lrs": [math.nan]}, "lrs"),
    ({"lrs": [1e-3, math.inf]}, "lrs"),
    ({"epochs": math.inf}, "epochs"),
    ({"validation_size": math.inf}, "validation_size"),
    ({"samples_sweep": [0, -3]}, "samples_sweep"),
    ({"merge_grid": {"k": [0]}}, "merge_grid.k"),
    ({"merge_method": "bogus"}, "merge_method"),
    ({"merge_grid": {"methods": ["average", "bogus"]}}, "merge_grid.methods"),
])
def test_bad_values_fail_at_load_naming_file_and_field(tmp_path, change, field):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["arc_easy", "sciq"], "k": 1, **change}))
    with pytest.raises(MashupError) as error:
        load_experiment_config(path)
    assert str(path) in error.value.line() and f"'{field}" in error.value.line()


# --- F11: the report never hides a corrupt or missing unit record ---

def test_a_corrupt_record_is_an_error_naming_it_and_keeps_the_good_report(two_runs, tmp_path):
    first, _ = two_runs
    out = Path(shutil.copytree(first.out, tmp_path / "out"))
    good = (out / "report.md").read_text()
    corrupt = out / "units" / unit_file_name(SCRATCH_UNIT)
    corrupt.write_text('{"unit": ')
    with pytest.raises(MashupError, match="unreadable unit record") as error:
        write_report(out)
    assert str(corrupt) in error.value.line()
    assert (out / "report.md").read_text() == good


def test_missing_records_fail_the_report_with_their_count_unless_partial(two_runs, tmp_path, capsys, monkeypatch,
                                                                         caplog):
    from tests.test_cli import run_cli

    first, _ = two_runs
    out = Path(shutil.copytree(first.out, tmp_path / "out"))
    good = (out / "report.md").read_text()
    (out / "units" / unit_file_name(SCRATCH_UNIT)).unlink()
    _, err = run_cli(["report", out], capsys, monkeypatch, expect=1)
    assert "1 of" in err and "no record" in err and "--partial" in err
    assert (out / "report.md").read_text() == good
    run_cli(["report", out, "--partial"], capsys, monkeypatch)
    assert "partial report: 1 of" in caplog.text and "Partial report" in (out / "report.md").read_text()
    assert "n/a" in (out / "report" / "table3.md").read_text()


# --- minor: the experiment does not tell users to pass a flag it does not have ---

def test_the_experiment_does_not_hint_at_a_select_flag(tiny_base, tmp_path, caplog):
    config = tiny_config(tiny_base, write_tasks(tmp_path)[:2], tmp_path / "out", **SMALL)
    with caplog.at_level(logging.INFO):
        run_experiment(config)
    assert "trained on the target" in caplog.text
    assert "--include-target-checkpoints" not in caplog.text
