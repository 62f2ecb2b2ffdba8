"""`mashup merge` refusals and provenance: one base per merge, no repeated checkpoint, scales that fit float32,
a mergekit export that names the base dir the merge read and never outlives (or lives inside) the merge."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mashup.config import MergeConfig
from mashup.errors import MergeError
from mashup.library.identity import base_identity
from mashup.merging import merge_checkpoints
from tests.cli_errors import one_line_error
from tests.merging.helpers import records
from tests.test_cli import run_cli
from tests.tiny import save_tiny_base, save_tiny_full, save_tiny_lora


@pytest.fixture(scope="module")
def other_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny base: the same architecture and shapes, other weights (so another content identity)."""
    root = tmp_path_factory.mktemp("other-base")
    base = save_tiny_base(root / "base2", seed=7)
    save_tiny_lora(base, root / "lora", seed=5)
    save_tiny_full(base, root / "full", seed=20)
    return base


def _add(paths: list[Path], lib: Path, capsys, monkeypatch, base: Path | None = None) -> list[str]:
    extra = ["--base", base] if base else []
    out, _ = run_cli(["library", "add", *paths, *extra, "--library", lib, "--json"], capsys, monkeypatch)
    return json.loads(out)


def _merge(ids: list[str], lib: Path, out: Path, capsys, monkeypatch, *extra, expect: int = 0) -> str:
    flags = [x for i in ids for x in ("--checkpoints", i)]
    return run_cli(["merge", *flags, "--out", out, "--library", lib, *extra], capsys, monkeypatch, expect=expect)[1]


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_checkpoints_of_different_bases_are_refused(kind, tmp_path, tiny_base, tiny_loras, tiny_fulls, other_base,
                                                    capsys, monkeypatch):
    lib = tmp_path / "lib"
    if kind == "lora":
        ids = _add([tiny_loras[0]], lib, capsys, monkeypatch) + _add([other_base.parent / "lora"], lib, capsys,
                                                                     monkeypatch)
    else:
        ids = (_add([tiny_fulls[0]], lib, capsys, monkeypatch, tiny_base)
               + _add([other_base.parent / "full"], lib, capsys, monkeypatch, other_base))
    err = one_line_error(_merge(ids, lib, tmp_path / "out", capsys, monkeypatch, expect=1))
    assert "different base models" in err and all(i in err for i in ids), err
    assert str(tiny_base) in err and str(other_base) in err and "merge checkpoints of one base" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_a_base_of_other_content_is_refused(kind, tmp_path, tiny_base, tiny_loras, tiny_fulls, other_base, capsys,
                                            monkeypatch):
    """Task vectors taken against another base, and its config and tokenizer copied: refused, naming both."""
    lib = tmp_path / "lib"
    ids = (_add(tiny_loras[:2], lib, capsys, monkeypatch) if kind == "lora"
           else _add(tiny_fulls[:2], lib, capsys, monkeypatch, tiny_base))
    err = one_line_error(_merge(ids, lib, tmp_path / "out", capsys, monkeypatch, "--method", "task_arithmetic",
                                "--base", other_base, expect=1))
    assert str(other_base) in err and str(tiny_base) in err and ids[0] in err, err
    assert base_identity(other_base)[:12] in err and not (tmp_path / "out").exists()
    _merge(ids, lib, tmp_path / "same", capsys, monkeypatch, "--base", tiny_base)  # its own base, spelled out


def test_the_same_checkpoint_twice_is_refused(tmp_path, tiny_loras, capsys, monkeypatch):
    lib = tmp_path / "lib"
    ids = _add(tiny_loras[:1], lib, capsys, monkeypatch)
    for twice in ([ids[0], ids[0]], [ids[0], ids[0][:6]]):
        err = one_line_error(_merge(twice, lib, tmp_path / "out", capsys, monkeypatch, expect=1))
        assert f"checkpoint {ids[0]} is given 2 times" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("settings", "words"), [
    ({"method": "task_arithmetic", "lambda": 1e39}, "beyond float32's range"),
    ({"weights": [1.0, -1e39]}, "beyond float32's range"),
])
def test_scales_that_zero_or_overflow_the_merge_are_refused(settings, words):
    with pytest.raises(ValidationError, match=words):
        MergeConfig.model_validate(settings)


def test_a_lambda_of_zero_is_refused_where_it_zeroes_every_lora_factor(tmp_path, tiny_loras, capsys, monkeypatch):
    """In mode ab task arithmetic scales both factors by sqrt(lambda): at 0 an all-zero adapter, which cannot
    train. Elsewhere lambda 0 is legitimate (the base itself, the end of a lambda sweep) or ignored."""
    lib = tmp_path / "lib"
    ids = _add(tiny_loras[:2], lib, capsys, monkeypatch)
    err = one_line_error(_merge(ids, lib, tmp_path / "out", capsys, monkeypatch, "--method", "task_arithmetic",
                                "--lambda", "0", expect=1))
    assert "lambda 0" in err and "--lora-mode delta" in err and not (tmp_path / "out").exists()
    for method, mode in (("task_arithmetic", "delta"), ("average", "ab")):
        _merge(ids, lib, tmp_path / f"{method}-{mode}", capsys, monkeypatch, "--method", method, "--lora-mode", mode,
               "--lambda", "0")


def test_an_overflowing_merge_blames_the_weights_not_a_checkpoint(tmp_path, tiny_base, tiny_fulls):
    config = MergeConfig(weights=[3e38, 3e38], normalize=False)
    with pytest.raises(MergeError, match="weights or lambda") as caught:
        merge_checkpoints(records(tiny_fulls[:2], tiny_base), config, tmp_path / "out", base_model_dir=tiny_base)
    assert "broken" not in caught.value.line() and "--weights" in caught.value.line()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("inside", ["", "sub/mergekit.yaml"])
def test_an_export_inside_the_output_is_refused_up_front(inside, tmp_path, tiny_base, tiny_fulls, capsys,
                                                         monkeypatch):
    lib = tmp_path / "lib"
    ids = _add(tiny_fulls[:2], lib, capsys, monkeypatch, tiny_base)
    export = tmp_path / "out" / inside if inside else tmp_path / "out"
    err = one_line_error(_merge(ids, lib, tmp_path / "out", capsys, monkeypatch, "--method", "ties",
                                "--export-mergekit", export, expect=1))
    assert "inside the merge's --out dir" in err and not (tmp_path / "out").exists()


def test_a_failed_export_write_leaves_no_merge(tmp_path, tiny_base, tiny_fulls, capsys, monkeypatch):
    write_text = Path.write_text

    def full_disk(path: Path, text: str, *args, **kwargs) -> int:  # the export's temp file cannot be written
        if path.name.startswith(".mergekit.yaml"):
            raise OSError(28, "No space left on device", str(path))
        return write_text(path, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    lib = tmp_path / "lib"
    ids = _add(tiny_fulls[:2], lib, capsys, monkeypatch, tiny_base)
    export = tmp_path / "mergekit.yaml"
    err = one_line_error(_merge(ids, lib, tmp_path / "out", capsys, monkeypatch, "--method", "ties",
                                "--export-mergekit", export, expect=1))
    assert str(export) in err and ".tmp" not in err and "No space left" in err, err
    assert not (tmp_path / "out").exists() and not export.exists()


def test_the_export_names_the_base_dir_the_merge_read(tmp_path, tiny_base, tiny_fulls, capsys, monkeypatch):
    """A base spelled relative to the working dir resolves to a dir mergekit can find from anywhere."""
    lib = tmp_path / "lib"
    ids = _add(tiny_fulls[:2], lib, capsys, monkeypatch, tiny_base)
    monkeypatch.chdir(tiny_base.parent)
    _merge(ids, lib, tmp_path / "out", capsys, monkeypatch, "--method", "ties", "--base", tiny_base.name,
           "--export-mergekit", tmp_path / "mergekit.yaml")
    exported = yaml.safe_load((tmp_path / "mergekit.yaml").read_text())
    assert exported["base_model"] == str(tiny_base.absolute())
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["base"] == {"model": tiny_base.name, "dir": str(tiny_base.absolute()),
                              "identity": base_identity(tiny_base)}


def test_the_report_records_the_base_and_the_calibration_data(tmp_path, tiny_base, tiny_loras, mc_file, capsys,
                                                               monkeypatch):
    from mashup.config import DataConfig
    from mashup.data.target import load_target

    lib = tmp_path / "lib"
    ids = _add(tiny_loras[:2], lib, capsys, monkeypatch)
    _merge(ids, lib, tmp_path / "out", capsys, monkeypatch, "--method", "fisher", "--data", mc_file)
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["base"]["model"] == str(tiny_base) and report["base"]["identity"] == base_identity(tiny_base)
    target = load_target(DataConfig(data=str(mc_file)))
    assert report["calibration"] == {"target": target.name, "fingerprint": target.fingerprint,
                                     "examples": len(target.train), "seed": 0, "scoring": "cloze"}
    assert "base" not in yaml.safe_load((tmp_path / "out" / "merge_config.yaml").read_text())  # a MergeConfig still


def test_help_says_an_empty_output_dir_is_accepted(tmp_path, tiny_loras, capsys, monkeypatch):
    out, _ = run_cli(["merge", "--help"], capsys, monkeypatch)
    assert "must not exist, or be empty" in " ".join(re.sub("[│╭╮╰╯─]", " ", out).split())
    lib = tmp_path / "lib"
    ids = _add(tiny_loras[:2], lib, capsys, monkeypatch)
    (tmp_path / "empty").mkdir()
    _merge(ids, lib, tmp_path / "empty", capsys, monkeypatch)
    assert (tmp_path / "empty" / "adapter_model.safetensors").exists()


def test_a_setting_the_method_ignores_is_warned_of_once(tmp_path, tiny_base, tiny_fulls, capsys, monkeypatch,
                                                        caplog):
    """`mashup merge` checks the plan before it reads the base and writes the export from it too: each of those
    builds the plan, and the warning is still said once, by the merge itself."""
    lib = tmp_path / "lib"
    ids = _add(tiny_fulls[:2], lib, capsys, monkeypatch, base=tiny_base)
    with caplog.at_level("WARNING"):
        _merge(ids, lib, tmp_path / "out", capsys, monkeypatch, "--density", "0.5", "--export-mergekit",
               tmp_path / "merge.yaml")
    said = [r.getMessage() for r in caplog.records if "density 0.5 is ignored by average" in r.getMessage()]
    assert len(said) == 1, said
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["warnings"].count("density 0.5 is ignored by average") == 1
