"""Bad input to the CLI's library and demo options and its usage: one line naming what, where and the fix, a
non-zero exit, before any work, and nothing lost (audit 4: F12, F13). Config files and flags over them:
tests/test_bad_input_config.py."""

import json
from pathlib import Path

import pytest
from rich.console import Console

from mashup.demo import DemoSettings, build_source_library, run_demo
from mashup.errors import MashupError
from mashup.workspace import open_workspace
from tests.cli_errors import one_line_error
from tests.cli_helpers import cli_commands, command_flags
from tests.test_cli import run_cli

# F12: a typo in --kind or --library is an error, not an empty (successful) result


@pytest.mark.parametrize("kind", ["bogus", "LoRA"])
def test_unknown_kind_is_refused_with_the_valid_kinds(lora_lib, kind, capsys, monkeypatch):
    _, err = run_cli(["library", "list", "--kind", kind, "--library", lora_lib, "--json"], capsys, monkeypatch,
                     expect=1)
    assert f"unknown checkpoint kind '{kind}'" in one_line_error(err) and "lora, full" in err


@pytest.mark.parametrize("verb", [["list"], ["verify"], ["scores"], ["show", "abc"], ["remove", "abc"]])
def test_a_missing_library_dir_is_an_error_for_reading_verbs(tmp_path, verb, capsys, monkeypatch):
    missing = tmp_path / "no" / "such" / "lora_lib"
    _, err = run_cli(["library", *verb, "--library", missing], capsys, monkeypatch, expect=1)
    assert "library dir not found" in one_line_error(err) and str(missing) in err and "library add" in err
    assert not (tmp_path / "no").exists()


def test_a_dir_without_catalog_and_a_file_are_not_libraries(tmp_path, tiny_loras, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    _, err = run_cli(["library", "verify", "--library", tmp_path / "empty"], capsys, monkeypatch, expect=1)
    assert "no library catalog" in one_line_error(err)
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    for verb in (["list"], ["add", tiny_loras[0]]):
        _, err = run_cli(["library", *verb, "--library", afile], capsys, monkeypatch, expect=1)
        assert "the library is a file" in one_line_error(err)
    assert afile.read_text() == "keep me"


def test_a_missing_library_from_the_environment_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MASHUP_LIBRARY", str(tmp_path / "typo"))
    _, err = run_cli(["library", "list"], capsys, monkeypatch, expect=1)
    assert "library dir not found" in one_line_error(err) and "MASHUP_LIBRARY" in err


def test_the_default_library_not_made_yet_lists_empty(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MASHUP_LIBRARY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    out, _ = run_cli(["library", "list", "--json"], capsys, monkeypatch)
    assert json.loads(out) == []


def test_select_and_run_refuse_a_missing_library_before_any_work(tmp_path, tiny_base, mc_file, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the library was checked")

    monkeypatch.setattr("mashup.verbs.select", no_work)
    monkeypatch.setattr("mashup.run.run", no_work)
    common = ["--base", tiny_base, "--data", mc_file, "--library", tmp_path / "typo"]
    for verb in (["select", "--kind", "full"], ["run", "--out", tmp_path / "run"]):
        _, err = run_cli([*verb, *common], capsys, monkeypatch, expect=1)
        assert "library dir not found" in one_line_error(err)
    _, err = run_cli(["select", "--kind", "bogus", *common], capsys, monkeypatch, expect=1)
    assert "unknown checkpoint kind 'bogus'" in one_line_error(err)


def test_the_python_verbs_refuse_a_missing_library_too(tmp_path, tiny_base, mc_file):
    """As the CLI does: a typo in a library path is not an empty library ("0 usable checkpoints")."""
    from mashup.config import DataConfig, MergeConfig, SelectConfig
    from mashup.verbs import merge, select

    data = DataConfig(data=str(mc_file), scoring="letter")
    with pytest.raises(MashupError, match="library dir not found"):
        select(str(tiny_base), data, SelectConfig(samples=4, k=1), tmp_path / "typo")
    with pytest.raises(MashupError, match="library dir not found"):
        merge(["abc"], MergeConfig(), tmp_path / "merged", tmp_path / "typo")
    assert not (tmp_path / "merged").exists() and not (tmp_path / "typo").exists()


# F13: the demo checks its options before any work


@pytest.fixture()
def no_demo_work(monkeypatch) -> None:
    def no_work(*args, **kwargs):
        raise AssertionError("the demo started work before checking its options")

    monkeypatch.setattr("mashup.demo.open_workspace", no_work)
    monkeypatch.setattr("mashup.demo.build_source_library", no_work)


def test_demo_refuses_a_repeated_seed_before_any_work(tmp_path, no_demo_work, capsys, monkeypatch):
    with pytest.raises(MashupError, match="seed 0 given more than once"):
        run_demo(tmp_path / "demo", seeds=[0, 1, 0], settings=DemoSettings())
    _, err = run_cli(["demo", "--out", tmp_path / "demo", "--seed", "0", "--seed", "0"], capsys, monkeypatch, expect=1)
    assert "given more than once" in one_line_error(err) and "--seed" in err
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_an_existing_out_before_any_work(tmp_path, no_demo_work):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "kept.txt").write_text("mine")
    with pytest.raises(MashupError, match="already exists and is not empty"):
        run_demo(out, seeds=[0])
    assert (out / "kept.txt").read_text() == "mine"


def test_demo_refuses_an_unknown_precision_before_any_work(tmp_path, no_demo_work, monkeypatch):
    with pytest.raises(MashupError, match="unknown precision 'fp64'.*--precision"):
        run_demo(tmp_path / "demo", precision="fp64")  # type: ignore[arg-type]
    monkeypatch.setenv("MASHUP_PRECISION", "fp64")
    with pytest.raises(MashupError, match="unknown precision 'fp64'.*MASHUP_PRECISION"):
        run_demo(tmp_path / "demo")


def test_demo_sources_given_as_files_stay_in_the_cache_and_are_reused(tmp_path, tiny_base, mc_file, monkeypatch):
    # the source's path once named its output dir (an absolute one: the data file itself, replaced by the adapter
    # dir), and its task name ("target") is not that path: a rerun trained and registered it again
    monkeypatch.setenv("MASHUP_CACHE", str(tmp_path / "cache"))
    settings = DemoSettings(base=str(tiny_base), target=str(mc_file), sources=(str(mc_file),), scoring="letter",
                            max_length=64, source_steps=1, source_batch_size=4)
    workspace = open_workspace(settings.base, settings.data(settings.target), "fp32")
    first = build_source_library(settings, workspace, Console(stderr=True)).list()
    again = build_source_library(settings, workspace, Console(stderr=True)).list()
    assert len(first) == 1 and [r.id for r in again] == [first[0].id]
    assert mc_file.is_file() and Path(first[0].path).is_relative_to(tmp_path / "cache")


def test_a_missing_data_file_is_its_error_alone_without_a_training_bar(tmp_path, tiny_base, capsys, monkeypatch):
    _, err = run_cli(["train", "--out", tmp_path / "out", "--base", tiny_base, "--data", tmp_path / "nope.jsonl"],
                     capsys, monkeypatch, expect=1)
    assert "nope.jsonl" in one_line_error(err) and err.startswith("error:"), err  # not even a blank line before
    assert "━" not in err and "None" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["merge"], "error: Missing option '--checkpoints'; see `mashup merge --help`"),
    (["nosuchverb"], "error: No such command 'nosuchverb'; see `mashup --help`"),
    (["library", "add", "x", "--workers", "0"], "error: Invalid value for '--workers'"),
])
def test_a_usage_error_is_one_line_too(argv, message, capsys, monkeypatch):
    """click prints usage, a hint and the error on four lines; every other error is one."""
    _, err = run_cli(argv, capsys, monkeypatch, expect=2)
    assert message in one_line_error(err)


def test_eval_on_the_validation_split_names_an_option_eval_takes(tiny_base, mc_file, capsys, monkeypatch):
    args = ["eval", "--base", tiny_base, "--data", mc_file, "--scoring", "letter", "--split", "validation"]
    _, err = run_cli(args, capsys, monkeypatch, expect=1)
    assert "no validation split" in one_line_error(err) and "--validation-size" in err
    assert "--validation-size" in command_flags(dict(cli_commands())["eval"])
    out, _ = run_cli([*args, "--validation-size", "0.25", "--json"], capsys, monkeypatch)
    assert json.loads(out)["n"] == 8  # a quarter of the 32 train examples of 40
