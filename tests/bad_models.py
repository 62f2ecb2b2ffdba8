"""Bad model and adapter dirs made from the tiny fixtures, and the one-line CLI error a bad one gives."""

import json
import shutil

import torch
from safetensors.torch import load_file

from mashup.config import DataConfig
from tests.cli_errors import one_line_error
from tests.test_cli import run_cli

DATA = {"scoring": "letter", "max_length": 128}
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def copy_dir(src, dst):
    shutil.copytree(src, dst)
    return dst


def data_config(mc_file):
    return DataConfig(data=str(mc_file), **DATA)


def eval_error(tiny_base, mc_file, capsys, monkeypatch, *args, base=None):
    """`mashup eval`'s stderr, which must be one line without a traceback, the command failing."""
    _, err = run_cli(["eval", "--base", base or tiny_base, "--data", mc_file, *args], capsys, monkeypatch, expect=1)
    return one_line_error(err)


def pickled_base(tiny_base, dst):
    """A copy of the base with its safetensors saved as a pickle (pytorch_model.bin) instead."""
    base = copy_dir(tiny_base, dst)
    for path in base.glob("*.safetensors"):
        torch.save(load_file(path), base / "pytorch_model.bin")
        path.unlink()
    return base


def with_config(tiny_base, dst, **change):
    """A copy of the base with ``change`` written over its config.json."""
    base = copy_dir(tiny_base, dst)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, **change}))
    return base
