"""A re-scan (``add --recursive``) skips a checkpoint whose registration is stale with one warning naming the dir,
why and the ``library remove`` to run, and registers the rest (``Added.stale``; ``--json``'s ``stale``, exit 0);
an explicit add of such a dir still refuses with that line, and registers no second entry at its path."""

import json
import logging
import os
import shutil

import pytest

from mashup.errors import LibraryError
from tests.library.helpers import many_adapters, noisy_copy, scanned_library
from tests.test_cli import run_cli


def set_alpha(adapter, alpha) -> None:
    """Edit an adapter's lora_alpha (None: drop it): the weights, and so their digest, stay as they were."""
    path = adapter / "adapter_config.json"
    config = {k: v for k, v in json.loads(path.read_text()).items() if k != "lora_alpha"}
    path.write_text(json.dumps(config if alpha is None else {**config, "lora_alpha": alpha}))


@pytest.fixture()
def scanned(tmp_path, tiny_loras):
    """Three adapters registered by a re-scan: (their dir, the library, the records)."""
    return scanned_library(tmp_path, tiny_loras[0], 3)


def test_a_rescan_skips_stale_registrations_with_a_warning_each_and_adds_the_new(scanned, tiny_loras, caplog):
    root, library, first = scanned
    shutil.rmtree(root / "a0001")
    noisy_copy(tiny_loras[0], root / "a0001", seed=7)  # new weights at a registered path
    set_alpha(root / "a0000", 99)  # other settings, the same weights
    many_adapters(tiny_loras[0], root, 2, offset=3)
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        again = library.add([root], recursive=True)
    assert [r.path for r in again] == [str(root / "a0003"), str(root / "a0004")]
    assert [s.record.id for s in again.stale] == [first[0].id, first[1].id]
    assert [r.id for r in again.skipped] == [first[2].id]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    for warning, name, why in zip(warnings, ("a0000", "a0001"), ("lora_alpha", "weights changed")):
        record = first[int(name[-1])]
        assert warning.startswith(f"skipped {root / name}: registered as {record.id}, which is stale (")
        assert why in warning
        assert warning.endswith(f"`mashup library remove {record.id}`, then add it again")
    assert len(library.list()) == 5 and library.get(first[1].id).path == first[1].path  # left as it was
    assert [s.record.id for s in library.add([root], recursive=True).stale] == [first[0].id, first[1].id]


def test_a_registration_stale_since_a_default_changed_does_not_stop_a_rescan(scanned, tiny_loras):
    """A LoRA without lora_alpha registered when it read as r: the re-scan names that entry and goes on."""
    root, library, first = scanned
    set_alpha(root / "a0002", None)
    with library._write() as conn:
        conn.execute("UPDATE checkpoints SET lora_alpha = lora_r WHERE id = ?", (first[2].id,))
    noisy_copy(tiny_loras[0], root / "new", seed=70)
    again = library.add([root], recursive=True)
    assert [r.path for r in again] == [str(root / "new")] and [s.record.id for s in again.stale] == [first[2].id]
    assert "has no lora_alpha" in again.stale[0].what


def test_a_copy_of_weights_whose_registration_elsewhere_is_stale_is_skipped(scanned, tmp_path):
    root, library, first = scanned
    shutil.copytree(root / "a0000", tmp_path / "more" / "copy")
    set_alpha(root / "a0000", 99)  # the registered dir's settings changed; the copy keeps the registered ones
    again = library.add([tmp_path / "more"], recursive=True)
    assert list(again) == [] and [s.record.id for s in again.stale] == [first[0].id]
    assert again.stale[0].where == str(tmp_path / "more" / "copy")
    assert f"registered as {first[0].id} at {root / 'a0000'}, which is stale" in again.stale[0].what


def test_a_rescan_of_a_moved_dir_skips_an_adapter_whose_settings_changed(scanned, tmp_path):
    root, library, first = scanned
    os.rename(root, tmp_path / "moved")
    set_alpha(tmp_path / "moved" / "a0001", 99)
    again = library.add([tmp_path / "moved"], recursive=True)
    assert [r.id for r in again.relocated] == [first[0].id, first[2].id] == [r.id for r in again]
    assert [s.record.id for s in again.stale] == [first[1].id] and "lora_alpha" in again.stale[0].what
    assert library.get(first[1].id).path == first[1].path  # not re-pointed
    assert library.get(first[0].id).path == str(tmp_path / "moved" / "a0000")


def test_an_explicit_add_of_a_stale_dir_still_refuses_and_adds_no_second_entry(scanned, tiny_loras):
    root, library, first = scanned
    shutil.rmtree(root / "a0001")
    noisy_copy(tiny_loras[0], root / "a0001", seed=7)
    with pytest.raises(LibraryError, match=f"registered as {first[1].id}, which is stale .*weights changed.*"
                                           f"`mashup library remove {first[1].id}`, then add it again") as caught:
        library.add([root / "a0001"])
    assert "\n" not in str(caught.value)
    assert [r.id for r in library.list()] == [r.id for r in first]
    set_alpha(root / "a0000", 99)
    with pytest.raises(LibraryError, match=f"registered as {first[0].id}, which is stale .*lora_alpha"):
        library.add([root / "a0000"])
    library.remove(first[1].id)  # the fix the line names
    assert library.add([root / "a0001"])[0].path == str(root / "a0001")


def test_cli_rescan_with_a_stale_registration_exits_0_and_lists_it(scanned, tiny_loras, capsys, monkeypatch,
                                                                     caplog):
    root, library, first = scanned
    set_alpha(root / "a0000", 99)
    noisy_copy(tiny_loras[0], root / "new", seed=71)
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        out, _ = run_cli(["library", "add", root, "-r", "--library", library.directory, "--json"], capsys,
                         monkeypatch)
    report = json.loads(out)
    new_id = library.list()[-1].id
    assert report == {"added": [new_id], "skipped": [first[1].id, first[2].id], "relocated": [], "repaired": [],
                      "stale": [first[0].id]}
    assert f"skipped {root / 'a0000'}: registered as {first[0].id}, which is stale" in caplog.text
    out, _ = run_cli(["library", "add", root, "-r", "--library", library.directory], capsys, monkeypatch)
    assert out.splitlines() == ["skipped 3 checkpoints already registered with the same weights",
                                "skipped 1 checkpoint whose registration is stale (see the warnings: "
                                "`mashup library remove ID`, then add again)"]
    _, err = run_cli(["library", "add", root / "a0000", "--library", library.directory], capsys, monkeypatch,
                     expect=1)
    assert f"`mashup library remove {first[0].id}`, then add it again" in err and err.strip().count("\n") == 0


def test_a_stale_entry_found_at_its_dir_and_as_a_copy_is_checked_and_listed_once(scanned, tmp_path, caplog):
    root, library, first = scanned
    shutil.copytree(root / "a0000", root / "z-copy")
    set_alpha(root / "a0000", 99)
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        again = library.add([root], recursive=True)
    assert list(again) == [] and [s.record.id for s in again.stale] == [first[0].id]
    assert sum(first[0].id in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING) == 1
    assert len(library.list()) == 3


def test_a_plain_add_of_a_registered_dir_that_is_gone_says_it_is_not_found(scanned, tmp_path):
    """Not 'remove the entry': the user may have typed the old path of a moved checkpoint, whose entry a re-scan
    (or an add of its new dir) relocates, lineage and all."""
    root, library, first = scanned
    os.rename(root / "a0000", tmp_path / "moved")
    with pytest.raises(Exception, match="not found") as caught:
        library.add([root / "a0000"])
    assert "library remove" not in str(caught.value)
    assert library.add([tmp_path / "moved"])[0].id == first[0].id
