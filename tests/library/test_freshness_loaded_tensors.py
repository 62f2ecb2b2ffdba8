"""A full fine-tune registered when its shapes were read from every weight file (Mistral's consolidated.safetensors
too) lists tensors the files transformers loads do not hold: verify, selection and a re-scan find its entry stale,
with the fix, from the headers alone."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mashup.io.headers as headers
from mashup.library import Library, freshness
from tests.test_cli import run_cli

OTHER_NAME = "layers.0.attention.wq.weight"  # mistral-inference's name, in consolidated.safetensors


@pytest.fixture()
def header_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The weight files the freshness check read the header of; loading a tensor fails the test."""
    reads: list[str] = []
    real = headers.tensor_shapes
    monkeypatch.setattr(freshness, "tensor_shapes", lambda path: reads.append(path.name) or real(path), raising=False)
    monkeypatch.setattr(headers, "load_weights", lambda path: pytest.fail(f"tensors of {path} loaded"))
    return reads


def _full_with_other_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    save_file({OTHER_NAME: torch.zeros(2, 2)}, str(dst / "consolidated.safetensors"))
    return dst


def _as_registered_before(library: Library, checkpoint_id: str) -> None:
    """The entry's shapes as registration recorded them when it read every weight file: the other copy's too."""
    with sqlite3.connect(library.db_path) as conn:
        (shapes,) = conn.execute("SELECT shapes FROM checkpoints WHERE id = ?", (checkpoint_id,)).fetchone()
        conn.execute("UPDATE checkpoints SET shapes = ? WHERE id = ?",
                     (json.dumps({**json.loads(shapes), OTHER_NAME: [2, 2]}), checkpoint_id))


def test_an_entry_listing_another_copys_tensors_is_stale_with_the_fix(tmp_path, tiny_base, tiny_fulls, header_reads):
    full = _full_with_other_copy(tiny_fulls[0], tmp_path / "fulls" / "full")
    library = Library(tmp_path / "lib")
    record = library.add([full], base=str(tiny_base))[0]
    assert OTHER_NAME not in record.shapes
    assert [c.status for c in library.verify()] == ["ok"]
    _as_registered_before(library, record.id)
    (check,) = library.verify()
    assert check.status == "changed" and "\n" not in check.reason
    assert f"e.g. {OTHER_NAME}" in check.reason and "read consolidated.safetensors too" in check.reason
    assert check.reason.endswith("remove the entry and add the checkpoint again")
    fresh, stale = library.fresh(library.list())
    assert fresh == [] and [r.id for r, _ in stale] == [record.id]
    again = library.add([tmp_path / "fulls"], base=str(tiny_base), recursive=True)
    assert list(again) == [] and again.skipped == [] and [s.record.id for s in again.stale] == [record.id]
    assert set(header_reads) == {"model.safetensors"}, "headers of the loaded files only"


def test_verify_reports_it(tmp_path, tiny_base, tiny_fulls, capsys, monkeypatch):
    full = _full_with_other_copy(tiny_fulls[0], tmp_path / "full")
    library = Library(tmp_path / "lib")
    record = library.add([full], base=str(tiny_base))[0]
    _as_registered_before(library, record.id)
    out, _ = run_cli(["library", "verify", "--library", tmp_path / "lib", "--json"], capsys, monkeypatch, expect=1)
    (problem,) = json.loads(out)["problems"]
    assert problem["id"] == record.id and problem["status"] == "changed" and OTHER_NAME in problem["reason"]


def test_entries_without_another_copy_read_no_header(tmp_path, tiny_base, tiny_fulls, tiny_loras, header_reads):
    """Only a dir holding weight files beside those transformers loads can have been registered from other files."""
    library = Library(tmp_path / "lib")
    library.add([tiny_fulls[1]], base=str(tiny_base))
    library.add([tiny_loras[0]])
    assert [c.status for c in library.verify()] == ["ok", "ok"]
    fresh, stale = library.fresh(library.list())
    assert len(fresh) == 2 and stale == []
    assert header_reads == []
