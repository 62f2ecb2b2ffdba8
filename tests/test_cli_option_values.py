"""Every option of the verbs that build configs from flags, walked with values click accepts and a config may
refuse: each is refused in one line naming options of that verb only (never a config field path such as
`'max_share.constrained-float'`), or is one the option takes (ACCEPTED)."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
import typer

from mashup.cli import main
from tests.cli_helpers import cli_commands, command_flags

SWITCH_CONFIG = "candidates:\n  - {model: b, role: aligned}\n  - {model: c}\n"
VERBS = {
    "select": (["--base", "b", "--data", "d"], "mashup.verbs.select"),
    "merge": (["--checkpoints", "a", "--out", "{tmp}/m", "--data", "d"], "mashup.verbs.merge"),  # data: checked
    "train": (["--base", "b", "--data", "d", "--out", "{tmp}/t"], "mashup.verbs.train_model"),
    "eval": (["--base", "b", "--data", "d"], "mashup.verbs.evaluate_model"),
    "run": (["--base", "b", "--data", "d", "--out", "{tmp}/r"], "mashup.run.run"),
    "switch collect": (["--config", "{config}", "--task", "t", "--out", "{tmp}/c"], "mashup.switch.collect.collect"),
    "switch train": (["--config", "{config}", "--data", "{tmp}", "--out", "{tmp}/s"],
                     "mashup.switch.train.check_switcher_inputs"),
    "switch generate": (["--config", "{config}", "hi"], "mashup.switch.api.generate"),
    "switch eval": (["--config", "{config}", "--task", "t", "--out", "{tmp}/e"], "mashup.switch.api.evaluate_into"),
}
# options naming a model, task, file or dir: any text is a name, looked up by the work the walk stops before
NAMES = frozenset({"--base", "--data", "--name", "--train", "--test", "--library", "--checkpoints", "--ray-address",
                   "--task", "--reward", "--adapter", "--writer", "--system"})
BAD_VALUES: dict[type, tuple[str, ...]] = {int: ("0",), float: ("0", "2", "nan"), str: ("bogus",)}
NUMBERS_AS_TEXT = frozenset({"--halving-max-share"})  # a str option that also takes a number
DATA_VERBS = ("select", "merge", "train", "eval", "run")
ACCEPTED = {
    *((verb, "--test-size", "2") for verb in DATA_VERBS),  # a count
    *((verb, "--validation-size", size) for verb in DATA_VERBS for size in ("0", "2")),  # 0: none
    *((verb, "--seed", "0") for verb in ("select", "merge", "train", "run", "switch collect", "switch train")),
    *((verb, "--epochs", "2") for verb in ("train", "switch train")),
    ("select", "--rows", "0"), ("switch eval", "--max-examples", "0"),
    ("select", "--halving-factor", "2"), ("select", "--prefilter-keep", "2"),  # a count
    ("select", "--halving-keep-within-se", "0"), ("select", "--halving-keep-within-se", "2"),
    ("merge", "--lambda", "-1"), ("merge", "--lambda", "0"), ("merge", "--lambda", "2"), ("merge", "--weights", "2"),
    # checked where the work starts, which the walk stops before
    *((verb, "--precision", "bogus") for verb in ("select", "train", "eval")),
}
MUST_REFUSE = {("select", "--halving-max-share", "-1"), ("run", "--k", "0"), ("merge", "--density", "2"),
               ("eval", "--split", "bogus"), ("switch collect", "--reward-mode", "bogus"), ("train", "--lr", "nan"),
               ("merge", "--test-size", "0"), ("merge", "--method", "bogus"), ("run", "--merge-method", "bogus")}


def _value_type(command: Any, name: str) -> Any:
    """The type of an option's values (a list's items) as the verb's function declares it: int, float, str..."""
    annotation = inspect.signature(command.callback, eval_str=True).parameters[name].annotation
    while get_origin(annotation) in (Annotated, Union, UnionType, list):
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    return annotation


def _values(verb: str, flag: str, value_type: Any) -> tuple[str, ...]:
    """The values walked for one option: "-1" only where 0 is taken (elsewhere it is refused in 0's words)."""
    below_zero = (verb, flag, "0") in ACCEPTED or flag in NUMBERS_AS_TEXT
    return BAD_VALUES.get(value_type, ()) + (("-1",) if below_zero else ())


def _option_values() -> list[tuple[str, str, str]]:
    commands = dict(cli_commands())
    return [(verb, param.opts[0], value) for verb in VERBS for param in commands[verb].params
            if param.param_type_name == "option" and param.opts[0].startswith("--") and param.opts[0] not in NAMES
            for value in _values(verb, param.opts[0], _value_type(commands[verb], param.name))]


def test_the_walk_covers_the_values_known_to_be_refused():
    walked = set(_option_values())
    assert MUST_REFUSE <= walked and not MUST_REFUSE & ACCEPTED
    assert ACCEPTED <= walked, ACCEPTED - walked  # an option renamed or retyped: its entry would assert nothing


def _run_stopped(verb: str, flag: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The verb's exit status and stderr with ``flag value``, its work replaced by a clean exit (no model)."""
    monkeypatch.setenv("HOME", str(tmp_path))  # the default library: not made yet, so empty
    monkeypatch.delenv("MASHUP_LIBRARY", raising=False)
    (tmp_path / "switch.yaml").write_text(SWITCH_CONFIG)
    required, work = VERBS[verb]

    def stop(*args: Any, **kwargs: Any) -> None:  # the options are checked by now
        raise typer.Exit(0)

    module, name = work.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, stop)  # mashup.switch.collect is also a function
    args = [arg.format(tmp=tmp_path, config=tmp_path / "switch.yaml") for arg in required]
    monkeypatch.setattr(sys, "argv", ["mashup", *verb.split(), *args, flag, value])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    return int(code), capsys.readouterr().err


@pytest.mark.parametrize(("verb", "flag", "value"), _option_values())
def test_an_invalid_option_value_names_an_option_of_the_verb(verb, flag, value, tmp_path, capsys, monkeypatch):
    code, err = _run_stopped(verb, flag, value, tmp_path, monkeypatch, capsys)
    if (verb, flag, value) in ACCEPTED:
        assert code == 0, err
        return
    assert code != 0 and err.strip().count("\n") == 0 and "Traceback" not in err, err
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", err))
    assert flag in named and named <= command_flags(dict(cli_commands())[verb]), err
    assert "invalid value for '" not in err, err  # a field path where an option belongs


@pytest.mark.parametrize(("field", "argv", "named"), [
    ("max_share", ["--halving-max-share", "-1"], "--halving-max-share"),
    ("halving.factor", ["--halving-factor=0"], "--halving-factor"),
    ("prefilter.signals.1", ["--prefilter-signals", "arrow,x"], "--prefilter-signals (value 2)"),
    ("train.batch_size", ["--batch-size", "0"], "--batch-size"),
    ("lambda", ["--lambda", "nan"], "--lambda"),
    ("mode", ["--reward-mode", "x"], "--reward-mode"),
])
def test_option_named_maps_a_field_path_to_the_flag_typed(field, argv, named):
    from mashup.cli_options import option_named

    assert option_named(field, argv) == named


@pytest.mark.parametrize(("loc", "path"), [
    (("max_share", "constrained-float"), "max_share"),
    (("select", "halving", "max_share", "literal['auto']"), "select.halving.max_share"),
    (("weights", 1), "weights.1"),
    (("lr", "function-after[_lr_at_most_one(), nullable[constrained-float]]"), "lr"),
    (("candidates", 0, "model"), "candidates.0.model"),
])
def test_a_field_path_leaves_out_the_union_member_labels(loc, path):
    from mashup.config_files import field_path

    assert field_path(loc) == path
