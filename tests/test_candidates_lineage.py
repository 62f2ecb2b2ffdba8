"""Selection never ranks a checkpoint trained on the target, nor one that carries such a checkpoint's weights: a merge
of it, a merge of such a merge, a run trained from one (followed through the lineage's ``merged_from``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mashup.candidates import find_mergeable_candidates, trained_on
from mashup.config import DataConfig, MergeConfig, SelectConfig
from mashup.data import load_target
from mashup.library import Library
from mashup.merging import merge_checkpoints
from mashup.verbs import select
from tests.test_cli import run_cli


def _select(tiny_base: Path, mc_file: Path, lib: Path, k: int = 1, include: bool = False):
    return select(str(tiny_base), DataConfig(data=str(mc_file), scoring="letter", max_length=96),
                  SelectConfig(samples=4, k=k, include_target_checkpoints=include), lib)


@pytest.fixture()
def leaky(tmp_path: Path, tiny_loras: list[Path], mc_file: Path):
    """Two LoRAs trained on the target ('target'), a third that was not, and the merge of the first two registered:
    (library, [trained0, trained1, clean], merge)."""
    library = Library(tmp_path / "lib")
    target = load_target(DataConfig(data=str(mc_file)))
    lineage = {"trained_on": {"task": None, "data_fingerprint": target.fingerprint}}
    inputs = library.add(tiny_loras[:2], data_fingerprint=target.fingerprint, lineage=lineage)
    clean = library.add(tiny_loras[2:])[0]
    merge_checkpoints(inputs, MergeConfig(method="average"), tmp_path / "merged")
    merged = library.add([tmp_path / "merged"])[0]
    return library, [*inputs, clean], merged


def test_a_merge_of_checkpoints_trained_on_the_target_is_excluded_naming_the_one_that_was(tiny_base, mc_file, leaky):
    library, (trained0, trained1, clean), merged = leaky
    result = _select(tiny_base, mc_file, library.directory)
    assert [s.id for s in result.ranking] == [clean.id]
    own = "trained on the target 'target'"
    assert result.excluded == [{"id": trained0.id, "reason": own}, {"id": trained1.id, "reason": own},
                               {"id": merged.id, "reason": f"merged from {trained0.id}, {own}"}]
    ranked = _select(tiny_base, mc_file, library.directory, k=4, include=True)
    assert sorted(s.id for s in ranked.ranking) == sorted([trained0.id, trained1.id, clean.id, merged.id])
    assert ranked.excluded == []


def test_a_merge_of_that_merge_is_excluded_too(tmp_path: Path, tiny_base, mc_file, leaky):
    library, (trained0, _, clean), merged = leaky
    merge_checkpoints([merged, clean], MergeConfig(method="average"), tmp_path / "merged2")
    twice = library.add([tmp_path / "merged2"])[0]
    excluded = {e["id"]: e["reason"] for e in _select(tiny_base, mc_file, library.directory).excluded}
    assert excluded[twice.id] == (f"merged from {merged.id}, itself merged from {trained0.id}, "
                                  "trained on the target 'target'")


def test_a_run_from_a_merge_counts_as_trained_on_its_sources_targets(tmp_path: Path, tiny_base, tiny_loras,
                                                                     mc_file):
    library = Library(tmp_path / "lib")
    source = library.add(tiny_loras[:1], task="target")[0]
    run_out = library.add(tiny_loras[1:2], task="other", lineage={
        "merged_from": [source.id], "merge_method": "average", "trained_on": {"task": "other"}})[0]
    library.add(tiny_loras[2:])
    result = _select(tiny_base, mc_file, library.directory)
    assert [e["id"] for e in result.excluded] == [source.id, run_out.id]
    assert result.excluded[1]["reason"] == f"merged from {source.id}, trained on the target 'target'"


def test_lineage_is_followed_through_checkpoints_outside_among(tmp_path: Path, tiny_base, mc_file, leaky):
    """An experiment's leave-one-out ranks only its sources (``among``); a merge among them still carries the
    target's own source, though that one is not among them."""
    library, (_, _, clean), merged = leaky
    target = load_target(DataConfig(data=str(mc_file)))
    found = find_mergeable_candidates(library, str(tiny_base), "lora", target, [MergeConfig()],
                                      among=[clean.id, merged.id])
    assert [r.id for r in found.records] == [clean.id] and [e["id"] for e in found.excluded] == [merged.id]


def test_a_cycle_or_an_ancestor_removed_ends_the_walk(tmp_path: Path, tiny_loras, mc_file):
    library = Library(tmp_path / "lib")
    first = library.add(tiny_loras[:1], lineage={"merged_from": ["0" * 12]})[0]  # not registered (yet)
    second = library.add(tiny_loras[1:2], lineage={"merged_from": [first.id, "gone"]})[0]
    library.remove(first.id)
    first = library.add(tiny_loras[:1], lineage={"merged_from": [second.id]})[0]  # a hand-made cycle
    records = {r.id: r for r in library.list()}
    target = load_target(DataConfig(data=str(mc_file)))
    assert not trained_on(first, target, records) and not trained_on(second, target, records)
    records[second.id].task = "target"
    assert trained_on(first, target, records) and not trained_on(first, target)  # alone: the record itself


def test_the_cli_repro_select_json_excludes_the_merge(tmp_path: Path, tiny_base, tiny_loras, mc_file, capsys,
                                                      monkeypatch, caplog):
    lib = tmp_path / "lib"
    out, _ = run_cli(["library", "add", *tiny_loras[:2], "--trained-on", mc_file, "--library", lib, "--json"],
                     capsys, monkeypatch)
    trained = json.loads(out)
    run_cli(["library", "add", tiny_loras[2], "--library", lib], capsys, monkeypatch)
    run_cli(["merge", "--checkpoints", *trained, "--out", tmp_path / "merged", "--library", lib], capsys, monkeypatch)
    out, _ = run_cli(["library", "add", tmp_path / "merged", "--library", lib, "--json"], capsys, monkeypatch)
    merged = json.loads(out)[0]
    out, _ = run_cli(["library", "list", "--merged-from", trained[0], "--library", lib, "--json"], capsys, monkeypatch)
    assert [r["id"] for r in json.loads(out)] == [merged]
    out, _ = run_cli(["select", "--base", tiny_base, "--data", mc_file, "--samples", "4", "--k", "1",
                      "--scoring", "letter", "--library", lib, "--json"], capsys, monkeypatch)
    result = json.loads(out)
    assert merged not in [r["id"] for r in result["ranking"]]
    assert [e["id"] for e in result["excluded"]] == [*trained, merged]
    assert f"excluded 3 checkpoint(s) trained on the target 'target' ({trained[0]}, {trained[1]}, {merged} via " \
        f"{trained[0]})" in caplog.text
