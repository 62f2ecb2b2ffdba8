"""Bad config files and flags over them, met by `mashup run --config` and ``load_config``: one line naming the
file or flag, the field and the fix, before any work (audit 4: F6, F8; audit 5)."""

from pathlib import Path

import pytest

from mashup.config import RunConfig, load_config
from mashup.errors import MashupError
from tests.cli_errors import one_line_error
from tests.test_cli import run_cli

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


def test_run_merges_flags_over_a_partial_config(tmp_path, lora_lib, mc_file, captured_run, capsys, monkeypatch):
    path = tmp_path / "partial.yaml"
    path.write_text("select: {k: 1, samples: 4}\ntrain: {max_steps: 2, batch_size: 4}\n")
    run_cli(["run", "--config", path, "--base", "tiny", "--data", mc_file, "--library", lora_lib, "--out",
             tmp_path / "run", "--max-steps", "3", "--no-register", "--json"], capsys, monkeypatch)
    config = captured_run[0]
    assert (config.base, config.data.data, config.out) == ("tiny", str(mc_file), str(tmp_path / "run"))
    assert (config.select.k, config.select.samples, config.train.max_steps, config.train.batch_size) == (1, 4, 3, 4)
    assert not config.add_to_library


def test_a_bad_field_in_a_partial_config_names_the_file(tmp_path, lora_lib, mc_file, captured_run, capsys, monkeypatch):
    path = tmp_path / "partial.yaml"
    path.write_text("select: {k: 0}\n")
    _, err = run_cli(["run", "--config", path, "--base", "tiny", "--data", mc_file, "--library", lora_lib, "--out",
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
def test_a_bad_flag_value_over_a_config_names_the_flag_not_the_file(tmp_path, lora_lib, mc_file, captured_run, flag,
                                                                     problem, capsys, monkeypatch):
    """`run --config ok.yaml --k 0`: the file is fine (its k is overridden), the flag's value is not."""
    path = _complete_config(tmp_path, mc_file)
    _, err = run_cli(["run", "--config", path, "--library", lora_lib, *flag], capsys, monkeypatch, expect=2)
    assert f"invalid value for {flag[0]}: Input should be {problem}; fix that option" in one_line_error(err)
    assert str(path) not in err and "config field" not in err and not captured_run


def test_a_bad_file_value_beside_good_flags_still_names_the_file(tmp_path, lora_lib, mc_file, captured_run, capsys,
                                                                  monkeypatch):
    path = _complete_config(tmp_path, mc_file)
    path.write_text(path.read_text().replace("{k: 2}", "{k: 2, samples: 0}"))
    _, err = run_cli(["run", "--config", path, "--library", lora_lib, "--k", "3", "--seed", "1"], capsys, monkeypatch,
                     expect=1)
    assert f"invalid config field 'select.samples': Input should be greater than 0 in {path}; fix that field" in \
        one_line_error(err)
    assert not captured_run


@pytest.mark.parametrize("from_flag", [False, True])
def test_an_unknown_merge_method_names_the_flag_or_file_before_any_work(tmp_path, lora_lib, mc_file, captured_run,
                                                                        from_flag, capsys, monkeypatch):
    path = _complete_config(tmp_path, mc_file)
    flag = ["--merge-method", "bogus"] if from_flag else []
    if not from_flag:
        path.write_text(path.read_text() + "merge: {method: bogus}\n")
    _, err = run_cli(["run", "--config", path, "--library", lora_lib, *flag], capsys, monkeypatch, expect=1)
    where = "--merge-method" if from_flag else str(path)
    assert f"unknown merge method 'bogus' in {where}; use one of: average," in one_line_error(err)
    assert not captured_run


@pytest.mark.parametrize(("option", "problem"), [(["--lora-mode", "bogus"], "Input should be 'ab', 'delta' or"),
                                                 (["--density=2"], "density must be in (0, 1]")])
def test_a_bad_flag_value_names_the_flag_in_its_own_words(tmp_path, lora_lib, mc_file, captured_run, option, problem,
                                                           capsys, monkeypatch):
    """The flag as typed, not the config field behind it, and the validator's message without pydantic's prefix."""
    _, err = run_cli(["run", "--base", "tiny", "--data", mc_file, "--library", lora_lib, "--out", tmp_path / "run",
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


def test_a_value_neither_the_config_nor_a_flag_gives_names_the_file(tmp_path, lora_lib, mc_file, captured_run, capsys,
                                                                     monkeypatch):
    path = tmp_path / "partial.yaml"
    path.write_text("select: {k: 1}\n")
    _, err = run_cli(["run", "--config", path, "--data", mc_file, "--library", lora_lib, "--out", tmp_path / "run"],
                     capsys, monkeypatch, expect=1)
    assert "missing --base" in one_line_error(err) and str(path) in err and not captured_run


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
