"""A library at scale: recursive registration (parallel, all or nothing), lineage and filtered listing."""

import json
import shutil

import pytest

from mashup.errors import CheckpointError, LibraryError
from mashup.library import Library
from tests.library.helpers import many_adapters, noisy_copy
from tests.test_cli import run_cli


def test_recursive_add_registers_every_checkpoint_dir_with_progress(tmp_path, tiny_base, tiny_loras, tiny_fulls):
    root = tmp_path / "tree"
    many_adapters(tiny_loras[0], root / "group-a", 5)
    many_adapters(tiny_loras[0], root / "group-b" / "deeper", 4, offset=5)
    shutil.copytree(tiny_fulls[0], root / "group-b" / "full")
    noisy_copy(tiny_loras[0], root / ".run.mashup-tmp-0a1b2c3d" / "adapter", seed=7)  # a temp output: skipped
    (root / "notes").mkdir()
    (root / "notes" / "config.json").write_text("{}")  # a config without weights is no checkpoint
    ticks = []
    records = Library(tmp_path / "lib").add([root], recursive=True, base=str(tiny_base), task="src", workers=4,
                                           progress=lambda done, total: ticks.append((done, total)))
    assert len(records) == 10 and sum(r.kind == "full" for r in records) == 1
    assert ticks[-1] == (10, 10) and [d for d, _ in ticks] == sorted(d for d, _ in ticks)
    assert len({r.id for r in records}) == 10 and all(r.file_stats for r in records)


def test_recursive_add_is_all_or_nothing_and_names_the_bad_one(tmp_path, tiny_loras):
    root = tmp_path / "tree"
    many_adapters(tiny_loras[0], root, 6)
    (root / "a0003" / "adapter_model.safetensors").write_bytes(b"broken")
    library = Library(tmp_path / "lib")
    with pytest.raises(CheckpointError, match="a0003"):
        library.add([root], recursive=True, workers=3)
    assert library.list() == []
    shutil.rmtree(root / "a0003")
    shutil.copytree(root / "a0001", root / "copy-of-a0001")
    with pytest.raises(LibraryError, match="given twice"):
        library.add([root], recursive=True)
    assert library.list() == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no adapter or model dirs"):
        library.add([tmp_path / "empty"], recursive=True)


def test_lineage_is_stored_and_filters_the_list(tmp_path, tiny_base, tiny_loras, tiny_fulls):
    library = Library(tmp_path / "lib")
    sources = library.add(tiny_loras[:2], task="sciq")
    merged = noisy_copy(tiny_loras[2], tmp_path / "run" / "mashup" / "adapter", seed=5)
    child = library.add([merged], task="arc_easy", data_fingerprint="f" * 64, lineage={
        "merged_from": [s.id for s in sources], "trained_on": {"task": "arc_easy", "data_fingerprint": "f" * 64},
        "run": str(tmp_path / "run")})[0]
    library.add(tiny_fulls[:1], base=str(tiny_base), task="sciq")
    assert library.get(child.id).lineage["merged_from"] == [s.id for s in sources]
    assert library.get(child.id).data_fingerprint == "f" * 64
    assert [r.id for r in library.list(merged_from=sources[1].id[:6])] == [child.id]
    assert [r.id for r in library.list(trained_on="arc_easy")] == [child.id]
    assert [r.id for r in library.list(trained_on="ffffff")] == [child.id]
    assert [r.kind for r in library.list(task="sciq")] == ["lora", "lora", "full"]
    assert len(library.list(kind="lora", task="sciq")) == 2 and library.list(base="no/such-base") == []


def test_cli_add_recursive_list_filters_and_show_lineage(tmp_path, tiny_loras, capsys, monkeypatch):
    lib = tmp_path / "lib"
    root = tmp_path / "tree"
    many_adapters(tiny_loras[0], root, 3)
    added = json.loads(run_cli(["library", "add", root, "--recursive", "--task", "sciq", "--library", lib, "--json"],
                               capsys, monkeypatch)[0])
    ids = added["added"]
    assert len(ids) == 3 and added["skipped"] == []
    child = Library(lib).add([tiny_loras[1]], task="arc_easy", data_fingerprint="ab" * 32, lineage={
        "merged_from": ids[:2], "trained_on": {"task": "arc_easy", "data_fingerprint": "ab" * 32},
        "run": "runs/arc"})[0]
    out, _ = run_cli(["library", "list", "--merged-from", ids[0], "--library", lib, "--json"], capsys, monkeypatch)
    assert [r["id"] for r in json.loads(out)] == [child.id]
    out, _ = run_cli(["library", "list", "--task", "sciq", "--kind", "lora", "--library", lib, "--json"], capsys,
                     monkeypatch)
    assert [r["id"] for r in json.loads(out)] == ids
    out, _ = run_cli(["library", "show", child.id, "--library", lib], capsys, monkeypatch)
    assert f"merged from  {ids[0]} (sciq), {ids[1]} (sciq)" in out
    assert "trained on   arc_easy, data abababababab" in out and "run          runs/arc" in out
    shown = json.loads(run_cli(["library", "show", child.id, "--library", lib, "--json"], capsys, monkeypatch)[0])
    assert shown["lineage"]["merged_from"] == ids[:2] and shown["data_fingerprint"] == "ab" * 32
