"""Bad input to the CLI's library, config and demo options: one line naming what, where and the fix, a non-zero
exit, before any work, and nothing lost (audit 4: F6, F8, F12, F13)."""

import json
from pathlib import Path

import pytest
from rich.console import Console

from mashup.config import RunConfig, load_config
from mashup.demo import DemoSettings, build_source_library, run_demo
from mashup.errors import MashupError
from mashup.workspace import open_workspace
from tests.cli_helpers import cli_commands, command_flags
from tests.test_cli import run_cli


@pytest.fixture()
def lib(tmp_path: Path, tiny_loras: list[Path], capsys, monkeypatch) -> Path:
    """A library holding one LoRA."""
    run_cli(["library", "add", tiny_loras[0], "--library", tmp_path / "lib"], capsys, monkeypatch)
    return tmp_path / "lib"


def one_line_error(err: str) -> str:
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err


# F12: a typo in --kind or --library is an error, not an empty (successful) result


@pytest.mark.parametrize("kind", ["bogus", "LoRA"])
def test_unknown_kind_is_refused_with_the_valid_kinds(lib, kind, capsys, monkeypatch):
    _, err = run_cli(["library", "list", "--kind", kind, "--library", lib, "--json"], capsys, monkeypatch, expect=1)
    assert f"unknown checkpoint kind '{kind}'" in one_line_error(err) and "lora, full" in err


@pytest.mark.parametrize("verb", [["list"], ["verify"], ["scores"], ["show", "abc"], ["remove", "abc"]])
def test_a_missing_library_dir_is_an_error_for_reading_verbs(tmp_path, verb, capsys, monkeypatch):
    missing = tmp_path / "no" / "such" / "lib"
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


# F6: a config file that is not UTF-8 or not valid YAML


def test_a_non_utf8_config_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"base: x\nout: y\ndata: {data: \xff\xfe}\n")
    with pytest.raises(MashupError, match="not UTF-8") as caught:
        load_config(path, RunConfig)
    assert caught.value.where == str(path)
    _, err = run_cli(["run", "--config", path], capsys, monkeypatch, expect=1)
    assert "not UTF-8" in one_line_error(err) and str(path) in err


def test_a_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path, capsys, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_text("base: x\nselect: {k: 1\n")
    _, err = run_cli(["run", "--config", path], capsys, monkeypatch, expect=1)
    assert "invalid YAML" in one_line_error(err) and "line 3, column 1" in err and str(path) in err


# F8: `run --config` with a partial file, the flags supplying the rest


@pytest.fixture()
def captured_run(monkeypatch) -> list[RunConfig]:
    """`mashup run` validates its config and stops there: the run itself is tested elsewhere."""
    configs: list[RunConfig] = []

    def fake_run(config: RunConfig, stage) -> dict:
        configs.append(config)
        return {}

    monkeypatch.setattr("mashup.run.run", fake_run)
    return configs


def test_run_merges_flags_over_a_partial_config(tmp_path, lib, mc_file, captured_run, capsys, monkeypatch):
    path = tmp_path / "partial.yaml"
    path.write_text("select: {k: 1, samples: 4}\ntrain: {max_steps: 2, batch_size: 4}\n")
    run_cli(["run", "--config", path, "--base", "tiny", "--data", mc_file, "--library", lib, "--out",
             tmp_path / "run", "--max-steps", "3", "--no-register", "--json"], capsys, monkeypatch)
    config = captured_run[0]
    assert (config.base, config.data.data, config.out) == ("tiny", str(mc_file), str(tmp_path / "run"))
    assert (config.select.k, config.select.samples, config.train.max_steps, config.train.batch_size) == (1, 4, 3, 4)
    assert not config.add_to_library


def test_a_bad_field_in_a_partial_config_names_the_file(tmp_path, lib, mc_file, captured_run, capsys, monkeypatch):
    path = tmp_path / "partial.yaml"
    path.write_text("select: {k: 0}\n")
    _, err = run_cli(["run", "--config", path, "--base", "tiny", "--data", mc_file, "--library", lib, "--out",
                      tmp_path / "run"], capsys, monkeypatch, expect=1)
    assert "invalid config field 'select.k'" in one_line_error(err) and str(path) in err
    assert not captured_run


def _complete_config(tmp_path: Path, mc_file: Path) -> Path:
    path = tmp_path / "ok.yaml"
    path.write_text(f"base: tiny\nout: {tmp_path / 'run'}\ndata: {{data: {mc_file}}}\nselect: {{k: 2}}\n")
    return path


@pytest.mark.parametrize(("flag", "problem"), [(["--k", "0"], "greater than 0"),
                                               (["--seed", "-1"], "greater than or equal to 0"),
                                               (["--lr", "nan"], "a finite number")])
def test_a_bad_flag_value_over_a_config_names_the_flag_not_the_file(tmp_path, lib, mc_file, captured_run, flag,
                                                                     problem, capsys, monkeypatch):
    """`run --config ok.yaml --k 0`: the file is fine (its k is overridden), the flag's value is not."""
    path = _complete_config(tmp_path, mc_file)
    _, err = run_cli(["run", "--config", path, "--library", lib, *flag], capsys, monkeypatch, expect=2)
    assert f"invalid value for {flag[0]}: Input should be {problem}; fix that option" in one_line_error(err)
    assert str(path) not in err and "config field" not in err and not captured_run


def test_a_bad_file_value_beside_good_flags_still_names_the_file(tmp_path, lib, mc_file, captured_run, capsys,
                                                                  monkeypatch):
    path = _complete_config(tmp_path, mc_file)
    path.write_text(path.read_text().replace("{k: 2}", "{k: 2, samples: 0}"))
    _, err = run_cli(["run", "--config", path, "--library", lib, "--k", "3", "--seed", "1"], capsys, monkeypatch,
                     expect=1)
    assert f"invalid config field 'select.samples': Input should be greater than 0 in {path}; fix that field" in \
        one_line_error(err)
    assert not captured_run


@pytest.mark.parametrize("from_flag", [False, True])
def test_an_unknown_merge_method_names_the_flag_or_file_before_any_work(tmp_path, lib, mc_file, captured_run,
                                                                        from_flag, capsys, monkeypatch):
    path = _complete_config(tmp_path, mc_file)
    flag = ["--merge-method", "bogus"] if from_flag else []
    if not from_flag:
        path.write_text(path.read_text() + "merge: {method: bogus}\n")
    _, err = run_cli(["run", "--config", path, "--library", lib, *flag], capsys, monkeypatch, expect=1)
    where = "--merge-method" if from_flag else str(path)
    assert f"unknown merge method 'bogus' in {where}; use one of: average," in one_line_error(err)
    assert not captured_run


@pytest.mark.parametrize(("option", "problem"), [(["--lora-mode", "bogus"], "Input should be 'ab', 'delta' or"),
                                                 (["--density=2"], "density must be in (0, 1]")])
def test_a_bad_flag_value_names_the_flag_in_its_own_words(tmp_path, lib, mc_file, captured_run, option, problem,
                                                           capsys, monkeypatch):
    """The flag as typed, not the config field behind it, and the validator's message without pydantic's prefix."""
    _, err = run_cli(["run", "--base", "tiny", "--data", mc_file, "--library", lib, "--out", tmp_path / "run",
                      "--merge-method", "ties", *option], capsys, monkeypatch, expect=2)
    flag = option[0].split("=")[0]
    assert f"invalid value for {flag}: {problem}" in one_line_error(err) and "Value error" not in err
    assert not captured_run and not (tmp_path / "run").exists()


@pytest.mark.parametrize("verb", [["merge", "--lambda", "nan"], ["merge", "--weights", "0.5", "nan"],
                                  ["select", "--selector", "halving", "--halving-factor", "1"]])
def test_a_flag_named_apart_from_its_field_is_still_named(tmp_path, mc_file, verb, capsys, monkeypatch):
    """--lambda fills lambda_, --weights an item of weights, --halving-factor halving.factor."""
    inputs = {"merge": ["--checkpoints", "a", "b", "--out", tmp_path / "m"], "select": ["--base", "tiny", "--data",
                                                                                      mc_file]}[verb[0]]
    _, err = run_cli([*verb, *inputs], capsys, monkeypatch, expect=2)
    flag = {"--lambda": "--lambda: ", "--weights": "--weights (value 2): "}.get(verb[1], "--halving-factor: ")
    assert f"invalid value for {flag}" in one_line_error(err)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("verb", ["select", "merge", "train", "run"])
def test_a_negative_seed_is_refused(tmp_path, mc_file, verb, capsys, monkeypatch):
    """random.Random(-1) draws the same sample as Random(1) under another name (and numpy refuses it)."""
    inputs = {"merge": ["--checkpoints", "a", "b", "--out", tmp_path / "out"]}.get(
        verb, ["--base", "tiny", "--data", mc_file] + (["--out", tmp_path / "out"] if verb != "select" else []))
    _, err = run_cli([verb, *inputs, "--seed", "-1"], capsys, monkeypatch, expect=2)
    assert "invalid value for --seed: Input should be greater than or equal to 0" in one_line_error(err)
    assert not (tmp_path / "out").exists()


def test_a_value_neither_the_config_nor_a_flag_gives_names_the_file(tmp_path, lib, mc_file, captured_run, capsys,
                                                                     monkeypatch):
    path = tmp_path / "partial.yaml"
    path.write_text("select: {k: 1}\n")
    _, err = run_cli(["run", "--config", path, "--data", mc_file, "--library", lib, "--out", tmp_path / "run"],
                     capsys, monkeypatch, expect=1)
    assert "missing --base" in one_line_error(err) and str(path) in err and not captured_run


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


# audit 5: a misspelt config key is said as such, before what it leaves missing


@pytest.mark.parametrize(("text", "said"), [
    ("bsae: x\nout: y\ndata: {data: d}\n", "unknown config key 'bsae' (did you mean 'base'?)"),
    ("base: x\nout: y\ndata: {dat: d}\n", "unknown config key 'dat' in section 'data' (did you mean 'data'?)"),
    ("base: x\nout: y\ndata: {data: d}\nmerge: {lamda: 2}\n",
     "unknown config key 'lamda' in section 'merge' (did you mean 'lambda'?)"),
])
def test_a_misspelt_run_config_key_is_said_before_what_it_leaves_missing(tmp_path, text, said, capsys, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    _, err = run_cli(["run", "--config", path], capsys, monkeypatch, expect=1)
    assert said in one_line_error(err) and f"in {path};" in err and "missing" not in err
    assert "valid keys" in err and ("base, data, library, out" in err or "valid keys in section" in err)


def test_a_misspelt_required_key_in_any_config_file_is_said_as_such(tmp_path):
    from mashup.switch.config import CollectConfig

    path = tmp_path / "collect.yaml"
    path.write_text("taks: gsm8k\ninstances: 4\n")
    with pytest.raises(MashupError, match=r"unknown config key 'taks' \(did you mean 'task'\?\)") as caught:
        load_config(path, CollectConfig)
    assert "valid keys: task, instances" in caught.value.fix and caught.value.where == str(path)


def test_eval_on_the_validation_split_names_an_option_eval_takes(tiny_base, mc_file, capsys, monkeypatch):
    args = ["eval", "--base", tiny_base, "--data", mc_file, "--scoring", "letter", "--split", "validation"]
    _, err = run_cli(args, capsys, monkeypatch, expect=1)
    assert "no validation split" in one_line_error(err) and "--validation-size" in err
    assert "--validation-size" in command_flags(dict(cli_commands())["eval"])
    out, _ = run_cli([*args, "--validation-size", "0.25", "--json"], capsys, monkeypatch)
    assert json.loads(out)["n"] == 8  # a quarter of the 32 train examples of 40
