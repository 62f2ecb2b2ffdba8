"""A checkpoint moved while other weights were written at its old path: a re-scan skips the old dir as stale, and its
one warning names the dir now holding the entry's registered weights (not added: that entry is stale), with the fix
that keeps the entry (move the checkpoint at the old path away, add again: the entry follows its weights) or the
``library remove`` that registers both afresh. Both fixes are followed here to show they work."""

import json
import logging
import os
import shutil

import pytest

from mashup.library import Library
from tests.library.helpers import many_adapters, noisy_copy
from tests.test_cli import run_cli


@pytest.fixture()
def moved(tmp_path, tiny_loras, request):
    """Two adapters registered (with a task and lineage), then runs/a0000 moved to NEWDIR (beside it, or in another
    tree: ``request.param``) and other weights written at runs/a0000: (root, new dir, library, records)."""
    root = tmp_path / "runs"
    many_adapters(tiny_loras[0], root, 2)
    library = Library(tmp_path / "lib")
    first = library.add([root], recursive=True, task="arc_easy", lineage={"merged_from": ["abc"]})
    new_dir = (root / "b0000") if request.param == "beside" else (tmp_path / "elsewhere" / "b0000")
    new_dir.parent.mkdir(exist_ok=True)
    os.rename(root / "a0000", new_dir)
    noisy_copy(tiny_loras[0], root / "a0000", seed=7)
    return root, new_dir, library, first


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("moved", ["beside"], indirect=True)
def test_the_rescan_warning_names_the_dir_holding_the_registered_weights(moved, caplog):
    root, new_dir, library, first = moved
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        again = library.add([root], recursive=True)
    assert list(again) == [] and [r.id for r in again.skipped] == [first[1].id]
    assert [s.record.id for s in again.stale] == [first[0].id] and again.stale[0].where == str(root / "a0000")
    [warning] = warnings_of(caplog)
    assert warning.startswith(f"skipped {root / 'a0000'}: registered as {first[0].id}, which is stale (weights changed")
    old = root / "a0000"
    assert (f"its registered weights are now at {new_dir}: move the checkpoint at {old} to another dir, then add "
            f"both (the entry follows its weights to {new_dir})") in warning
    assert f"`mashup library remove {first[0].id}`, then add both" in warning and "\n" not in warning
    assert library.get(first[0].id).path == first[0].path  # left as it was


@pytest.mark.parametrize("moved", ["beside", "elsewhere"], indirect=True)
@pytest.mark.parametrize("recursive", [True, False], ids=["rescan", "plain"])
def test_moving_the_new_checkpoint_away_and_adding_both_re_points_the_entry(moved, recursive, caplog):
    root, new_dir, library, first = moved
    scanned = [root, new_dir.parent] if new_dir.parent != root else [root]
    stale = library.add(scanned, recursive=True).stale
    assert len(stale) == 1 and str(new_dir) in stale[0].fix
    os.rename(root / "a0000", root / "c0000")  # the fix the warning names
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        again = library.add(scanned if recursive else [new_dir, root / "c0000"], recursive=recursive)
    assert again.stale == [] and [r.id for r in again.relocated] == [first[0].id]
    entry = library.get(first[0].id)
    assert entry.path == str(new_dir) and entry.task == "arc_easy" and entry.lineage == {"merged_from": ["abc"]}
    assert [r.path for r in again if r.id != first[0].id] == [str(root / "c0000")]  # the new weights: added
    assert len(library.list()) == 3 and library.fresh(library.list())[1] == []
    assert any(f"moved: {root / 'a0000'} -> {new_dir}" in w for w in warnings_of(caplog))


@pytest.mark.parametrize("moved", ["beside"], indirect=True)
def test_removing_the_entry_and_adding_again_registers_both(moved):
    root, new_dir, library, first = moved
    library.add([root], recursive=True)
    library.remove(first[0].id)  # the other fix the warning names
    again = library.add([root], recursive=True)
    assert again.stale == [] and sorted(r.path for r in again) == [str(root / "a0000"), str(new_dir)]
    assert library.get(first[0].id).path == str(new_dir) and library.get(first[0].id).task is None
    assert len(library.list()) == 3 and library.fresh(library.list())[1] == []


@pytest.mark.parametrize("moved", ["elsewhere"], indirect=True)
def test_a_rescan_of_the_new_dir_alone_says_the_same(moved):
    root, new_dir, library, first = moved
    again = library.add([new_dir.parent], recursive=True)
    assert list(again) == [] and again.stale[0].where == str(new_dir)
    assert f"registered as {first[0].id} at {root / 'a0000'}, which is stale" in again.stale[0].what
    assert f"move the checkpoint at {root / 'a0000'} to another dir" in again.stale[0].fix


def test_a_copy_beside_a_dir_whose_settings_changed_keeps_the_plain_fix(tmp_path, tiny_loras):
    """The old dir still holds the registered weights (only its config changed): a copy, not a move."""
    root = tmp_path / "runs"
    many_adapters(tiny_loras[0], root, 1)
    library = Library(tmp_path / "lib")
    first = library.add([root], recursive=True)
    shutil.copytree(root / "a0000", root / "b-copy")
    config = root / "a0000" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "lora_alpha": 99}))
    [stale] = library.add([root], recursive=True).stale
    assert stale.record.id == first[0].id and "lora_alpha" in stale.what
    assert stale.fix == f"`mashup library remove {first[0].id}`, then add it again"


@pytest.mark.parametrize("moved", ["beside"], indirect=True)
def test_cli_rescan_names_the_new_dir_and_the_fix_then_relocates(moved, capsys, monkeypatch, caplog):
    root, new_dir, library, first = moved
    args = ["library", "add", root, "-r", "--library", library.directory]
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        out, _ = run_cli(args, capsys, monkeypatch)
    assert f"its registered weights are now at {new_dir}: move the checkpoint at {root / 'a0000'}" in caplog.text
    assert "skipped 1 checkpoint whose registration is stale" in out
    os.rename(root / "a0000", root / "c0000")
    out, _ = run_cli(args, capsys, monkeypatch)
    assert f"relocated {first[0].id} lora {new_dir}" in out.splitlines()
