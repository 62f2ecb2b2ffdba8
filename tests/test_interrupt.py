"""Interrupted and failing commands: a non-zero exit, and nothing left looking complete."""

from tests.test_cli import run_cli


def test_ctrl_c_exits_130_not_0(capsys, monkeypatch):
    """typer returns 130 outside standalone mode rather than exiting: ``mashup ... && next`` must not go on."""
    from mashup import cli_catalog

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_catalog, "emit", interrupted)
    _, err = run_cli(["tasks", "list"], capsys, monkeypatch, expect=130)
    assert "interrupted" in err and "Traceback" not in err


def test_an_export_that_cannot_be_written_leaves_no_merge(tmp_path, tiny_base, tiny_fulls, capsys, monkeypatch):
    """The --export-mergekit file's dir is checked before merging: a failing export left the merge behind."""
    import json

    lib = tmp_path / "lib"
    ids = json.loads(run_cli(["library", "add", *tiny_fulls[:2], "--base", tiny_base, "--library", lib, "--json"],
                             capsys, monkeypatch)[0])
    flags = [x for i in ids for x in ("--checkpoints", i)]
    _, err = run_cli(["merge", *flags, "--out", tmp_path / "merged", "--export-mergekit",
                      tmp_path / "no" / "such" / "mergekit.yaml", "--library", lib], capsys, monkeypatch, expect=1)
    assert "no such dir for the --export-mergekit file" in err and not (tmp_path / "merged").exists()


def test_library_add_interrupted_while_caching_prototypes_says_what_it_added(tmp_path, tiny_loras, capsys,
                                                                             monkeypatch):
    from mashup.library import Library
    from mashup.selection import prefilter

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prefilter, "warm_prototype_cache", interrupted)
    out, err = run_cli(["library", "add", *tiny_loras, "--library", tmp_path / "lib"], capsys, monkeypatch,
                       expect=130)
    added = [r.id for r in Library(tmp_path / "lib").list()]
    assert len(added) == 3 and all(f"added {i}" in out for i in added) and "interrupted" in err


def test_an_output_path_that_is_a_file_is_refused_even_with_overwrite(tmp_path):
    import pytest

    from mashup.atomic_dir import atomic_output_dir
    from mashup.errors import MashupError

    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    for overwrite in (False, True):
        with (pytest.raises(MashupError, match="the output path is a file"),
              atomic_output_dir(data, overwrite=overwrite)):
            pass
    assert data.read_text() == "{}\n"


def test_select_checks_the_kind_it_is_given(tiny_base, mc_file):
    import pytest

    from mashup.config import DataConfig, SelectConfig
    from mashup.errors import MashupError
    from mashup.verbs import select

    with pytest.raises(MashupError, match="unknown checkpoint kind 'LoRA'"):
        select(str(tiny_base), DataConfig(data=str(mc_file)), SelectConfig(), kind="LoRA")
