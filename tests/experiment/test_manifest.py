"""Artifact manifests: an edited artifact is no longer done, a cheap check (stats, hashes only where they changed),
older records without one stay valid, and records sharing an artifact never discard each other's."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from mashup.errors import MashupError
from mashup.experiment import store as store_module
from mashup.experiment.manifest import RESULT, Difference, scan, verify
from mashup.experiment.records import finished_result
from mashup.experiment.store import REPLACED, ResultStore, unit_file_name
from mashup.io import readable_size
from tests.experiment.helpers import track_reads

WEIGHTS = "merged/adapter_model.safetensors"
NAME = "merge-0123456789abcdef"
MERGED = {"merge_seconds": 0.004, "test": {"accuracy": 0.5, "loss": 1.0, "n": 4, "seconds": 0.1}}  # a merge's result


def _artifact(store: ResultStore, name: str = NAME, weights: bytes = b"w" * 64) -> Path:
    """A finished merge artifact as a job leaves it: weights, a config, and files that hold seconds."""
    path = store.artifact(name)
    (path / "merged").mkdir(parents=True)
    (path / WEIGHTS).write_bytes(weights)
    (path / "merged" / "adapter_config.json").write_text('{"r": 8}')
    (path / "merged" / "merge_report.json").write_text('{"seconds": 0.004}')
    (path / RESULT).write_text(json.dumps(MERGED))
    return path


def _record(store: ResultStore, arm: str, name: str = NAME, *, manifest: bool = True) -> str:
    """Record a merge unit on the artifact as it is now, as the runner does (``manifest=False``: as before them)."""
    unit_id = f"merge/alpha/{arm}"
    outputs, files = scan(store.artifact(name))
    record: dict[str, Any] = {
        "unit": unit_id, "key": "k", "artifact": name, "outputs": outputs, "seconds": 1.0,
        "fields": {"phase": "merges", "kind": "merge", "task": "alpha", "arm": arm, "seed": None, "lr": None},
        "result": MERGED}
    store.write(unit_id, {**record, "manifest": files} if manifest else record)
    return unit_id


@pytest.fixture()
def store(tmp_path) -> ResultStore:
    store = ResultStore(tmp_path / "out")
    store.units_dir.mkdir(parents=True)
    return store


@pytest.fixture()
def hashed(monkeypatch, store) -> list[Path]:
    """The artifact files the checks read (to hash them)."""
    return track_reads(monkeypatch, store.artifacts_dir)


def _names(paths: list[Path]) -> list[str]:
    return sorted(path.name for path in paths)


def test_an_unchanged_artifact_is_checked_without_reading_a_file(store, hashed):
    _artifact(store)
    unit = _record(store, "mashup_loss")
    hashed.clear()
    record = store.valid_record(unit, "k")
    assert record is not None and record == store.record(unit) and hashed == []  # nothing to record again


def test_an_edit_of_the_same_size_is_told_by_the_hash_of_that_file_alone(store, hashed):
    path = _artifact(store)
    unit = _record(store, "mashup_loss")
    hashed.clear()
    (path / WEIGHTS).write_bytes(b"x" * 64)
    assert store.valid_record(unit, "k") is None and _names(hashed) == ["adapter_model.safetensors"]


def test_a_changed_size_is_told_before_any_file_is_read(store, hashed):
    path = _artifact(store)
    unit = _record(store, "mashup_loss")
    hashed.clear()
    (path / WEIGHTS).write_bytes(b"w" * 65)
    assert store.valid_record(unit, "k") is None and hashed == []


def test_same_bytes_under_new_stats_count_as_unchanged_with_the_stats_brought_up_to_date(store, hashed):
    """A copied dir (new inodes, times): each file is hashed once; the run records the new stats."""
    path = _artifact(store)
    unit = _record(store, "mashup_loss")
    copy = path.with_name(path.name + ".copy")
    shutil.copytree(path, copy)
    shutil.rmtree(path)
    copy.rename(path)
    hashed.clear()
    record = store.valid_record(unit, "k")
    assert record is not None and _names(hashed) == ["adapter_config.json", "adapter_model.safetensors"]
    assert record["manifest"][WEIGHTS]["ino"] == (path / WEIGHTS).stat().st_ino != \
        store.record(unit)["manifest"][WEIGHTS]["ino"]


def test_stray_files_and_timing_files_are_no_change_but_a_new_file_is(store):
    path = _artifact(store)
    unit = _record(store, "mashup_loss")
    for stray in (".DS_Store", "merged/.DS_Store", "merged/._adapter_model.safetensors", "Thumbs.db"):
        (path / stray).write_bytes(b"\0Bud1")
    (path / "merged" / "merge_report.json").write_text('{"seconds": 9.9}')
    (path / RESULT).write_text(json.dumps({**MERGED, "merge_seconds": 9.9}))
    assert store.valid_record(unit, "k") is not None
    (path / "merged" / "model-00002.safetensors").write_bytes(b"more weights a loader would read")
    assert store.valid_record(unit, "k") is None


def test_a_record_written_before_manifests_stays_valid_and_gets_one(store):
    path = _artifact(store)
    unit = _record(store, "mashup_loss", manifest=False)
    record = store.valid_record(unit, "k")
    assert record is not None and record["manifest"] == scan(path)[1]
    (path / WEIGHTS).write_bytes(b"x" * 64)  # and its output hashes still tell an edit
    assert store.valid_record(unit, "k") is None


def test_an_edited_artifact_shared_by_two_records_is_replaced(store):
    path = _artifact(store)
    units = [_record(store, "mashup_loss"), _record(store, "mashup_accuracy")]
    (path / WEIGHTS).write_bytes(b"x" * 64)
    assert all(store.valid_record(unit, "k") is None for unit in units)
    assert store.to_replace(NAME) and not store.vouched(NAME)
    store.discard_artifact(NAME, "edited")
    assert not path.exists() and [p.name for p in store.artifacts_dir.iterdir()] == [REPLACED]  # no temp dir


def test_an_artifact_remade_for_an_equal_unit_is_not_replaced_under_the_others_record(store):
    """A later phase's unit recorded on an artifact an earlier phase's equal unit has since remade (other bytes:
    a GPU's training is not bit for bit): it is recorded again from it, never computed again, which would
    replace the artifact under the first unit's record and so on, turn by turn."""
    path = _artifact(store)
    sweep = _record(store, "grid:average:1")
    (path / WEIGHTS).write_bytes(b"x" * 64)
    loss = _record(store, "mashup_loss")  # remade and recorded for mashup_loss
    assert store.valid_record(sweep, "k") is None and store.valid_record(loss, "k") is not None
    assert store.vouched(NAME) and store.to_replace(NAME) is None


def test_a_finished_artifact_no_record_names_is_reused_and_an_incomplete_one_replaced(store):
    path = _artifact(store)  # a run killed between the artifact's rename and its unit's record
    assert store.to_replace(NAME) is None
    os.unlink(path / RESULT)  # written last by a job: without it, the dir was edited by hand
    assert store.to_replace(NAME) == f"incomplete ({RESULT} removed)"
    assert store.to_replace("merge-ffffffffffffffff") is None  # none: computed anyway


def test_an_edited_artifact_a_new_unit_claims_first_is_replaced_not_vouched_for(store):
    """The edit of an artifact recorded for one unit, claimed first by a unit of the same job with no record
    yet (a config that adds it): replaced, not reused for it and then vouching for the edit under the other."""
    path = _artifact(store)
    _record(store, "grid:average:1")
    (path / WEIGHTS).write_bytes(b"x" * 64)
    assert store.to_replace(NAME) == f"{WEIGHTS} changed since merge/alpha/grid:average:1 recorded it"


@pytest.mark.parametrize(("edit", "difference"), [
    (lambda path: (path / "NOTES.md").write_text("mine"), Difference("NOTES.md", "added")),
    (lambda path: (path / WEIGHTS).unlink(), Difference(WEIGHTS, "removed")),
    (lambda path: (path / WEIGHTS).write_bytes(b"w" * 65), Difference(WEIGHTS, "changed")),
    (lambda path: (path / "merged" / "adapter_config.json").write_text('{"r": 9}'),
     Difference("merged/adapter_config.json", "changed"))])
def test_verify_names_the_first_difference(store, edit, difference):
    path = _artifact(store)
    manifest = scan(path)[1]
    edit(path)
    assert verify(path, manifest) == difference


def test_a_replaced_artifact_is_moved_aside_with_a_users_files_and_the_reason_logged(store, caplog):
    path = _artifact(store)
    _record(store, "mashup_loss")
    (path / "NOTES.md").write_text("my notes on this merge\n")
    why = store.to_replace(NAME)
    with caplog.at_level(logging.WARNING):
        aside = store.discard_artifact(NAME, why)
    assert not path.exists() and (aside / "NOTES.md").read_text() == "my notes on this merge\n"
    assert aside.parent == store.artifacts_dir / REPLACED and aside.name.startswith(NAME + "-")
    assert "NOTES.md added since merge/alpha/mashup_loss recorded it" in caplog.text and str(aside) in caplog.text
    _artifact(store)
    assert store.discard_artifact(NAME, "again") != aside  # twice within a second: both kept
    with store.open():  # the next run's cleanup of killed runs' temp dirs leaves them alone
        assert len(list((store.artifacts_dir / REPLACED).iterdir())) == 2


def test_an_artifact_whose_result_is_not_its_kinds_is_incomplete_and_no_record_on_it_is_done(store):
    """Its result file is volatile (in no manifest): ``{}`` or a list there would be reused and recorded, making a
    record no run can read. Incomplete: replaced and computed again, under a record or none."""
    path = _artifact(store)
    unit = _record(store, "mashup_loss")
    for bad in ("{}", "[]", '{"merge_seconds": 0.004}', "not json"):
        (path / RESULT).write_text(bad)
        assert not store.has_artifact(NAME) and store.valid_record(unit, "k") is None and not store.vouched(NAME)
        assert store.to_replace(NAME).startswith(f"incomplete ({RESULT} ")
    (path / RESULT).write_text("{}")
    assert store.to_replace(NAME) == f"incomplete ({RESULT} is not a unit result: test: field required)"
    with pytest.raises(MashupError, match="incomplete artifact"):  # what a job reads, if it ever got there
        finished_result(path)
    (path / RESULT).write_text(json.dumps(MERGED))
    assert finished_result(path) == MERGED and finished_result(store.artifact("merge-ffffffffffffffff")) is None


def test_the_records_of_an_artifact_to_compute_are_retired_and_a_new_one_no_record_names_is_reused(store):
    """Moved to units/.replaced: a run killed after the new artifact's rename, before its units' records, leaves it
    named by no record, so the next run reuses it instead of replacing it again (a GPU's bytes differ each time)."""
    path = _artifact(store)
    units = [_record(store, "mashup_loss"), _record(store, "mashup_accuracy")]
    _artifact(store, "merge-ffffffffffffffff")
    other = _record(store, "oracle", "merge-ffffffffffffffff")
    (path / WEIGHTS).write_bytes(b"x" * 64)
    store.discard_artifact(NAME, store.to_replace(NAME))
    assert sorted(store.naming(NAME)) == sorted(units)
    moved = store.retire_records(NAME, [*units, other])  # the other names another artifact: kept
    assert sorted(p.parent for p in moved) == [store.units_dir / REPLACED] * 2
    assert all(store.record(u) is None and store.unreadable(u) is None for u in units)
    assert list(store.records()) == [other] and store.retire_records(NAME, units) == []
    _artifact(store, weights=b"y" * 64)  # computed again with other bytes, then killed before the records
    assert store.to_replace(NAME) is None and store.has_artifact(NAME)


def test_a_replaced_artifact_is_logged_with_its_size_and_the_dir_summed_up(store, caplog):
    path = _artifact(store)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert store.replaced_note() is None
    with caplog.at_level(logging.WARNING):
        store.discard_artifact(NAME, "edited")
    assert f"({size} B): safe to delete" in caplog.text
    _artifact(store)
    store.discard_artifact(NAME, "again")
    assert store.replaced_note() == (f"{store.artifacts_dir / REPLACED} holds 2 replaced artifact(s), {2 * size} B "
                                     "in all: nothing reads them again, safe to delete")


def test_the_note_at_the_end_of_a_run_counts_retired_records_too(store):
    """Records retired for an artifact removed by hand (nothing moved to artifacts/.replaced) are counted, and with
    replaced artifacts both dirs are named in the one line, summed together."""
    path = _artifact(store)
    unit = _record(store, "mashup_loss")
    shutil.rmtree(path)
    [retired] = store.retire_records(NAME, store.naming(NAME))
    record_size = retired.stat().st_size
    assert store.replaced_note() == (f"{store.units_dir / REPLACED} holds 1 retired record(s), "
                                     f"{readable_size(record_size)} in all: nothing reads them again, safe to delete")
    size = sum(p.stat().st_size for p in _artifact(store).rglob("*") if p.is_file())
    store.discard_artifact(NAME, "edited")
    assert store.record(unit) is None and store.replaced_note() == (
        f"{store.artifacts_dir / REPLACED} holds 1 replaced artifact(s) and {store.units_dir / REPLACED} holds 1 "
        f"retired record(s), {readable_size(size + record_size)} in all: nothing reads them again, safe to delete")


def test_retiring_the_records_of_an_artifact_reads_only_the_records_of_the_units_given(store, monkeypatch):
    """Called for every job computed, with the units the runner found naming its artifact as it claimed the job:
    reading every record again for each job was a scan per job."""
    _artifact(store)
    _artifact(store, "merge-ffffffffffffffff")
    units = [_record(store, "mashup_loss"), _record(store, "mashup_accuracy")]
    others = [_record(store, arm, "merge-ffffffffffffffff") for arm in ("oracle", "mashup_random")]
    reads: list[Path] = []
    real = store_module._load
    monkeypatch.setattr(store_module, "_load", lambda path: reads.append(path) or real(path))
    assert len(store.retire_records(NAME, units)) == 2
    assert _names(reads) == sorted(unit_file_name(u) for u in units)
    assert sorted(store.records()) == sorted(others)


def test_computing_a_job_retires_the_records_claimed_with_it_without_a_scan(store, monkeypatch):
    from types import SimpleNamespace

    from mashup.experiment import runner

    _artifact(store)
    _artifact(store, "merge-ffffffffffffffff")
    unit = _record(store, "mashup_loss")
    other = _record(store, "oracle", "merge-ffffffffffffffff")
    claimed = runner.Claimed(SimpleNamespace(root=str(store.root), artifact=NAME), tuple(store.naming(NAME)))
    reads: list[Path] = []
    real = store_module._load
    monkeypatch.setattr(store_module, "_load", lambda path: reads.append(path) or real(path))
    monkeypatch.setattr(runner, "execute_job", lambda job: {"computed": job.artifact})
    assert runner.compute_job(claimed) == {"computed": NAME}
    assert _names(reads) == [unit_file_name(unit)] and list(store.records()) == [other]
