"""Re-scanning a growing checkpoint dir adds the new checkpoints and skips the registered ones; verify's summary."""

import json
import logging
import shutil

import pytest

from mashup.errors import CheckpointError, LibraryError
from mashup.library import Library
from tests.library.helpers import many_adapters, noisy_copy, scanned_library
from tests.test_cli import run_cli



def test_recursive_add_skips_registered_weights_and_adds_the_new(tmp_path, tiny_loras, hashed, caplog):
    root = tmp_path / "runs"
    many_adapters(tiny_loras[0], root, 3)
    library = Library(tmp_path / "lib")
    first = library.add([root], recursive=True)
    assert first.skipped == []
    many_adapters(tiny_loras[0], root, 2, offset=3)
    shutil.copytree(root / "a0000", root / "copy-of-a0000")  # registered weights at another path
    hashed.clear()
    with caplog.at_level(logging.INFO, logger="mashup.library"):
        again = library.add([root], recursive=True)
    assert [r.path for r in again] == [str(root / "a0003"), str(root / "a0004")]
    assert sorted(r.path for r in again.skipped) == [str(root / n) for n in ("a0000", "a0001", "a0002",
                                                                            "copy-of-a0000")]
    assert {r.id for r in again.skipped} == {r.id for r in first}
    assert sorted(hashed) == ["a0003", "a0004", "copy-of-a0000"], "unchanged registered dirs are not hashed again"
    assert len(library.list()) == 5
    assert "4 checkpoint(s) already registered with the same weights: skipped" in caplog.text


def test_recursive_rescan_is_all_or_none_for_the_new_and_explicit_adds_still_refuse(tmp_path, tiny_loras):
    root = tmp_path / "runs"
    many_adapters(tiny_loras[0], root, 2)
    library = Library(tmp_path / "lib")
    first = library.add([root], recursive=True)
    many_adapters(tiny_loras[0], root, 2, offset=2)
    (root / "a0003" / "adapter_model.safetensors").write_bytes(b"broken")
    with pytest.raises(CheckpointError, match="a0003"):
        library.add([root], recursive=True)
    assert [r.id for r in library.list()] == [r.id for r in first]
    shutil.copytree(root / "a0002", root / "copy-of-a0002")
    shutil.rmtree(root / "a0003")
    with pytest.raises(LibraryError, match="given twice"):
        library.add([root], recursive=True)
    with pytest.raises(LibraryError, match=f"already registered as {first[0].id}"):
        library.add([root / "a0000"])
    assert [r.id for r in library.list()] == [r.id for r in first]


def test_everything_registered_adds_nothing(tmp_path, tiny_loras):
    root = tmp_path / "runs"
    many_adapters(tiny_loras[0], root, 2)
    library = Library(tmp_path / "lib")
    library.add([root], recursive=True)
    again = library.add([root], recursive=True)
    assert again == [] and len(again.skipped) == 2 and len(library.list()) == 2


def test_cli_rescan_says_how_many_were_skipped(tmp_path, tiny_loras, capsys, monkeypatch):
    lib, root = tmp_path / "lib", tmp_path / "runs"
    many_adapters(tiny_loras[0], root, 2)
    run_cli(["library", "add", root, "-r", "--library", lib], capsys, monkeypatch)
    noisy_copy(tiny_loras[0], root / "new", seed=77)
    out, _ = run_cli(["library", "add", root, "-r", "--library", lib], capsys, monkeypatch)
    assert out.count("added ") == 1 and f"{root / 'new'}" in out
    assert "skipped 2 checkpoints already registered with the same weights" in out
    noisy_copy(tiny_loras[0], root / "newer", seed=78)
    report = json.loads(run_cli(["library", "add", root, "-r", "--library", lib, "--json"], capsys, monkeypatch)[0])
    listed = json.loads(run_cli(["library", "list", "--library", lib, "--json"], capsys, monkeypatch)[0])
    assert report["added"] == [listed[-1]["id"]] and sorted(report["skipped"]) == sorted(r["id"] for r in listed[:3])
    out, _ = run_cli(["library", "add", root, "-r", "--library", lib], capsys, monkeypatch)
    assert out.strip() == "skipped 4 checkpoints already registered with the same weights (nothing new)"


def test_verify_with_every_checkpoint_ok_says_so_in_one_line(tmp_path, tiny_loras, capsys, monkeypatch):
    lib = tmp_path / "lib"
    run_cli(["library", "add", *tiny_loras[:2], "--library", lib], capsys, monkeypatch)
    out, _ = run_cli(["library", "verify", "--library", lib], capsys, monkeypatch)
    assert out == "all 2 checkpoints verified: weights unchanged\n"
    report = json.loads(run_cli(["library", "verify", "--library", lib, "--json"], capsys, monkeypatch)[0])
    assert report == {"checked": 2, "ok": 2, "unreadable": 0, "problems": []}


@pytest.fixture()
def scanned(tmp_path, tiny_loras):
    """A dir of two adapters, registered by a recursive add: (the dir, the library, the records)."""
    return scanned_library(tmp_path, tiny_loras[0], 2)


def test_a_rescan_of_a_moved_dir_relocates_its_registrations(tmp_path, scanned, caplog):
    root, library, first = scanned
    root.rename(tmp_path / "moved")
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        again = library.add([tmp_path / "moved"], recursive=True)
    assert [r.id for r in again] == [r.id for r in first] and again.skipped == []
    assert [r.id for r in again.relocated] == [r.id for r in first]
    assert [r.path for r in library.list()] == [str(tmp_path / "moved" / n) for n in ("a0000", "a0001")]
    assert f"checkpoint {first[0].id} moved: {first[0].path} -> {tmp_path / 'moved' / 'a0000'}" in caplog.text
    assert library.add([tmp_path / "moved"], recursive=True).skipped != []  # registered where they are now
