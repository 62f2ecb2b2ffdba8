"""The CLI's shared data options, multi-value options, exit codes, quiet warnings and complete --help. Invalid
values of every option: tests/test_cli_option_values.py."""

from __future__ import annotations

import json
import warnings

import pytest

from mashup.cli_runner import expand_multi_value_options
from mashup.evaluation import EvalResult
from mashup.library import Library
from tests.cli_helpers import cli_commands
from tests.conftest import write_mc_jsonl
from tests.test_cli import run_cli

DATA_OPTIONS = ("--data", "--name", "--train", "--test", "--test-size", "--validation-size", "--scoring",
                "--max-length", "--max-train-examples", "--max-test-examples")


def test_every_verb_that_reads_target_data_takes_the_same_options():
    commands = dict(cli_commands())
    for verb in ("select", "train", "eval", "run", "merge"):
        flags = {flag for param in commands[verb].params for flag in param.opts}
        assert set(DATA_OPTIONS) <= flags, verb


def test_help_gives_every_option_a_meaning_and_a_default():
    for name, command in cli_commands():
        for param in command.params:
            if param.param_type_name != "option" or param.name == "help":
                continue
            assert param.help, f"{name} {param.opts[0]} has no help"
            unexplained = param.default is None and not param.required and not getattr(param, "is_flag", False)
            if unexplained:
                assert isinstance(param.show_default, str) or "default" in param.help, \
                    f"{name} {param.opts[0]}: what happens when it is left out?"


def test_help_output_shows_defaults(capsys, monkeypatch):
    out, _ = run_cli(["train", "--help"], capsys, monkeypatch)
    assert "--test-size" in out and "0.2" in out and "--max-length" in out and "384" in out


@pytest.mark.parametrize("argv, expected", [
    (["merge", "--checkpoints", "a", "b", "--out", "x"], ["merge", "--checkpoints", "a", "--checkpoints", "b",
                                                          "--out", "x"]),
    (["merge", "--checkpoints", "a", "--checkpoints", "b"], ["merge", "--checkpoints", "a", "--checkpoints", "b"]),
    (["merge", "--weights", "0.7", "-0.3", "--checkpoints", "a"], ["merge", "--weights", "0.7", "--weights", "-0.3",
                                                                   "--checkpoints", "a"]),
    (["merge", "--checkpoints"], ["merge", "--checkpoints"]),
])
def test_multi_value_options_expand_to_the_repeated_form(argv, expected):
    assert expand_multi_value_options(argv) == expected


def test_merge_takes_checkpoints_as_one_list(tmp_path, tiny_loras, capsys, monkeypatch):
    ids = json.loads(run_cli(["library", "add", *tiny_loras, "--library", tmp_path / "lib", "--json"], capsys,
                             monkeypatch)[0])
    out, _ = run_cli(["merge", "--checkpoints", *ids, "--weights", "0.5", "0.25", "0.25", "--out", tmp_path / "m",
                      "--library", tmp_path / "lib", "--json"], capsys, monkeypatch)
    report = json.loads(out)
    assert report["checkpoint_ids"] == ids and report["weights"] == [0.5, 0.25, 0.25]


@pytest.mark.parametrize("argv", [["select", "--bogus"], ["train", "--data", "x"], ["nope"],
                                  ["merge", "--checkpoints", "a", "--out", "x", "--density", "abc"]])
def test_usage_errors_exit_2(argv, capsys, monkeypatch):
    _, err = run_cli(argv, capsys, monkeypatch, expect=2)
    assert "Traceback" not in err


def test_no_data_given_is_one_line(capsys, monkeypatch, tiny_base, tmp_path):
    _, err = run_cli(["eval", "--base", tiny_base], capsys, monkeypatch, expect=1)
    assert "no target data given" in err and err.strip().count("\n") == 0


def test_third_party_deprecation_warnings_never_reach_the_cli(capsys, monkeypatch, recwarn, tiny_base, mc_file):
    import mashup.verbs

    def noisy(*args, **kwargs):
        warnings.warn("`past_key_values` is deprecated", FutureWarning)
        warnings.warn("old API", DeprecationWarning)
        warnings.warn("Could not find a config file in smollm2-135m - will assume ...", UserWarning)
        return EvalResult(accuracy=0.5, loss=1.0, n=2, seconds=0.0)

    monkeypatch.setattr(mashup.verbs, "evaluate_model", noisy)
    _, err = run_cli(["eval", "--base", tiny_base, "--data", mc_file], capsys, monkeypatch)
    assert "Warning" not in err and "deprecated" not in err
    assert not [w for w in recwarn if "deprecated" in str(w.message) or "config file" in str(w.message)]


def test_run_with_separate_train_and_test_files(tmp_path, tiny_base, tiny_loras, capsys, monkeypatch):
    library = tmp_path / "lib"
    run_cli(["library", "add", *tiny_loras, "--library", library], capsys, monkeypatch)
    (tmp_path / "my_task").mkdir()
    train = write_mc_jsonl(tmp_path / "my_task" / "train.jsonl", 32, seed=1)
    test = write_mc_jsonl(tmp_path / "my_task" / "test.jsonl", 8, seed=2)
    out, _ = run_cli(["run", "--base", tiny_base, "--train", train, "--test", test, "--scoring", "letter",
                      "--max-length", "64", "--library", library, "--out", tmp_path / "run", "--baseline",
                      "--samples", "8", "--batch-size", "8", "--max-steps", "2", "--eval-every", "1", "--json"],
                     capsys, monkeypatch)
    summary = json.loads(out)
    assert summary["target"] == "my_task" and summary["scratch"]["curve"][-1]["step"] == 2
    assert summary["mashup"]["curve"][0]["step"] == 0 and set(summary["parity"]) == {"p99", "p100"}
    assert all(point["accuracy"] * 8 == round(point["accuracy"] * 8) for point in summary["mashup"]["curve"])
    assert Library(library).get(summary["registered"]).task == "my_task"
    data = __import__("yaml").safe_load((tmp_path / "run" / "run_config.yaml").read_text())["data"]
    assert (data["train"], data["test"], data["max_length"]) == (str(train), str(test), 64)


def test_name_option_names_a_file_target(tmp_path, tiny_base, capsys, monkeypatch):
    train = write_mc_jsonl(tmp_path / "rows.jsonl", 24)
    out, _ = run_cli(["train", "--base", tiny_base, "--train", train, "--name", "custom", "--scoring", "letter",
                      "--max-length", "64", "--out", tmp_path / "trained", "--batch-size", "4", "--max-steps", "1",
                      "--json"], capsys, monkeypatch)
    assert json.loads(out)["curve"][0]["step"] == 0
    assert __import__("yaml").safe_load((tmp_path / "trained" / "data_config.yaml").read_text())["name"] == "custom"


def _imported_by(modules: str, heavy: tuple[str, ...]) -> list[str]:
    """Which of ``heavy`` a fresh interpreter has imported after importing ``modules``."""
    import subprocess
    import sys

    code = f"import json, sys, {modules}; print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))"
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def test_the_cli_starts_without_torch_transformers_or_peft():
    """`mashup --help` stays fast: every verb imports its heavy modules on first use, not at CLI import."""
    assert _imported_by("mashup.cli", ("torch", "transformers", "peft")) == []


def test_library_commands_and_a_cached_select_import_no_model_code():
    """Listing a library or its score matrix reads JSON and SQLite only; a select imports model code only
    when it loads a model (a cached one loads none). On a 2-core CPU each of these imports costs seconds."""
    assert _imported_by("mashup.library, mashup.library.report", ("torch", "transformers", "peft")) == []
    assert _imported_by("mashup.verbs", ("peft", "transformers.modeling_utils")) == []


def test_base_help_lists_every_named_model(capsys, monkeypatch):
    from mashup.config import NAMED_BASES
    from mashup.named_models import NAMED_MODELS
    from mashup.switch.config import CandidateConfig

    assert NAMED_BASES == tuple(NAMED_MODELS)  # the literal --help shows, without importing torch for it
    assert all(name in CandidateConfig.model_fields["model"].description for name in NAMED_MODELS)
    commands = dict(cli_commands())
    for verb in ("select", "train", "eval", "run"):
        base = next(param for param in commands[verb].params if "--base" in param.opts)
        assert all(name in base.help for name in NAMED_MODELS), verb


def test_switch_train_help_shows_the_switchers_own_training_defaults():
    from mashup.switch.config import default_switcher_training

    defaults = default_switcher_training()
    params = {param.opts[0]: param for param in dict(cli_commands())["switch train"].params}
    assert params["--lr"].show_default == f"{defaults.lr:g}"
    assert params["--epochs"].show_default == f"{defaults.epochs:g}"
    assert params["--batch-size"].show_default == str(defaults.batch_size)
    assert not any("config" in str(params[flag].show_default) for flag in ("--lr", "--epochs", "--batch-size",
                                                                          "--max-steps"))


def test_progress_displays_draw_nothing_before_their_first_update():
    """A command whose input checks fail before any work prints its error line alone (no bar, no blank line)."""
    import io

    from rich.console import Console

    from mashup.progress import count_bar, scoring_bar, training_bars

    def drawn(display, update=None) -> str:
        console = Console(file=io.StringIO(), force_terminal=True, force_interactive=True, width=80)
        with display(console) as callback:
            if update:
                update(callback)
        return console.file.getvalue()

    for display in (lambda c: count_bar(c, "hashing"), scoring_bar, training_bars):
        assert drawn(display) == ""
    assert "hashing" in drawn(lambda c: count_bar(c, "hashing"), lambda update: update(1, 2))
    assert "train a" in drawn(training_bars, lambda stage: stage("a")(1, 2, 0.5))
