"""Counts `mashup select` is given: a prefilter keeps at least k, a keep count is whole, a sample larger than
the train split is said, and `library scores --checkpoint` resolves its id prefix."""

import json

import pytest
from pydantic import ValidationError

from mashup.config import PrefilterConfig
from mashup.library import Library
from mashup.selection.prefilter import keep_count
from tests.test_cli import run_cli
from tests.tiny import save_tiny_lora


def test_the_prefilter_keeps_at_least_k():
    config = PrefilterConfig(keep=1, min_keep=1)
    assert keep_count(4, config, k=3) == 3
    assert keep_count(2, config, k=3) == 2, "never more than there are"
    assert keep_count(1000, PrefilterConfig(keep=0.1, min_keep=32), k=3) == 100


def test_prefilter_halving_selects_k(tmp_path, tiny_base, tiny_loras, mc_file, capsys, monkeypatch):
    """A prefilter keeping 1 of 4 left halving one candidate: 1 selected for --k 3, exit 0."""
    fourth = save_tiny_lora(tiny_base, tmp_path / "lora3", seed=3)
    Library(tmp_path / "lib").add([*tiny_loras, fourth])
    out, _ = run_cli(["select", "--base", tiny_base, "--data", mc_file, "--library", tmp_path / "lib", "--samples", 8,
                      "--scoring", "letter", "--k", 3, "--selector", "prefilter+halving", "--prefilter-keep", 1,
                      "--prefilter-min-keep", 1, "--json"], capsys, monkeypatch)
    result = json.loads(out)
    assert len(result["selected"]) == 3 and result["stats"]["prefiltered_out"] == 1


@pytest.mark.parametrize("keep", [1.5, 2.25])
def test_a_keep_count_that_is_not_whole_is_refused(keep, tmp_path, tiny_base, tiny_loras, mc_file, capsys,
                                                    monkeypatch):
    with pytest.raises(ValidationError, match="neither a fraction"):
        PrefilterConfig(keep=keep)
    Library(tmp_path / "lib").add(tiny_loras[:2])
    _, err = run_cli(["select", "--base", tiny_base, "--data", mc_file, "--library", tmp_path / "lib",
                      "--selector", "prefilter+halving", "--prefilter-keep", keep], capsys, monkeypatch, expect=2)
    assert "--prefilter-keep" in err and "neither a fraction" in err and "Traceback" not in err


def test_whole_keep_counts_and_fractions_are_taken():
    assert PrefilterConfig(keep=2.0).keep == 2 and PrefilterConfig(keep=0.25).keep == 0.25


def test_more_samples_than_the_train_split_is_said_once(tmp_path, tiny_base, tiny_loras, mc_file, capsys,
                                                        monkeypatch, caplog):
    Library(tmp_path / "lib").add(tiny_loras[:2])
    with caplog.at_level("WARNING"):
        out, _ = run_cli(["select", "--base", tiny_base, "--data", mc_file, "--library", tmp_path / "lib",
                          "--samples", 256, "--scoring", "letter", "--json"], capsys, monkeypatch)
    n = json.loads(out)["n"]
    said = [r.getMessage() for r in caplog.records if "samples asked for" in r.getMessage()]
    assert n < 256 and said == [f"target's train split has {n} examples, fewer than the 256 samples asked for: "
                                f"scoring all {n}"]


def test_library_scores_of_an_unknown_id_is_one_error(tmp_path, tiny_base, tiny_loras, mc_file, capsys,
                                                      monkeypatch):
    ids = [r.id for r in Library(tmp_path / "lib").add(tiny_loras[:2])]
    lib = ["--library", tmp_path / "lib"]
    _, err = run_cli(["library", "scores", "--checkpoint", "zzz", *lib], capsys, monkeypatch, expect=1)
    assert err.startswith("error: no checkpoint with id 'zzz'") and len(err.strip().splitlines()) == 1
    # registered but not scored yet: an empty matrix, said
    out, err = run_cli(["library", "scores", "--checkpoint", ids[0], *lib, "--json"], capsys, monkeypatch)
    assert json.loads(out)["checkpoints"] == [] and "no cached scores match these filters" in err
    run_cli(["select", "--base", tiny_base, "--data", mc_file, *lib, "--samples", 4, "--scoring", "letter"], capsys,
            monkeypatch)
    out, _ = run_cli(["library", "scores", "--checkpoint", ids[0][:4], *lib, "--json"], capsys, monkeypatch)
    assert [row["id"] for row in json.loads(out)["checkpoints"]] == [ids[0]]
