"""Stale checkpoints: changed or missing files are found, skipped with a reason, and never served from the cache."""

import json
import logging
import os
import shutil
import sqlite3

import pytest

from mashup.config import DataConfig, SelectConfig
from mashup.library import Library
from mashup.verbs import select
from tests.library.helpers import noisy_copy
from tests.test_cli import run_cli


@pytest.fixture()
def own_loras(tmp_path, tiny_loras):
    """Copies we may change (the session's tiny adapters are shared)."""
    return [noisy_copy(src, tmp_path / "adapters" / f"own{i}", seed=i) for i, src in enumerate(tiny_loras)]


def test_unchanged_files_cost_a_stat_and_touched_ones_a_rehash(tmp_path, own_loras, rehashed):
    library = Library(tmp_path / "lib")
    records = library.add(own_loras)
    fresh, stale = library.fresh(library.list())
    assert [r.id for r in fresh] == [r.id for r in records] and stale == [] and rehashed == []
    weights = own_loras[0] / "adapter_model.safetensors"
    os.utime(weights, ns=(1, 1))  # same bytes, other mtime
    fresh, stale = library.fresh(library.list())
    assert len(fresh) == 3 and stale == [] and rehashed == ["own0"]
    assert library.get(records[0].id).file_stats[0]["mtime_ns"] == 1, "the new stats are stored"
    library.fresh(library.list())
    assert rehashed == ["own0"], "and not hashed again"


def test_changed_and_missing_checkpoints_are_stale_with_a_reason(tmp_path, own_loras):
    library = Library(tmp_path / "lib")
    records = library.add(own_loras)
    weights = own_loras[0] / "adapter_model.safetensors"
    stat = weights.stat()
    shutil.copyfile(own_loras[1] / "adapter_model.safetensors", weights)  # other bytes, same size
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime restored
    shutil.rmtree(own_loras[2])
    fresh, stale = library.fresh(library.list())
    assert [r.id for r in fresh] == [records[1].id]
    reasons = {r.id: reason for r, reason in stale}
    assert "weights changed since registration" in reasons[records[0].id]
    assert "is gone" in reasons[records[2].id]


def test_an_adapter_config_changed_after_registration_makes_the_entry_stale(tmp_path, own_loras, capsys,
                                                                           monkeypatch):
    """The digest covers the weights alone, yet alpha (or rank, rsLoRA, DoRA, targets) changes what they compute:
    an edited adapter_config.json must not leave a record, or its cached scores, describing the old adapter."""
    lib = tmp_path / "lib"
    ids = json.loads(run_cli(["library", "add", *own_loras, "--library", lib, "--json"], capsys, monkeypatch)[0])
    config_path = own_loras[0] / "adapter_config.json"
    config = json.loads(config_path.read_text())
    alpha = float(config["lora_alpha"])
    config_path.write_text(json.dumps({**config, "lora_alpha": 2 * alpha, "base_model_name_or_path": "renamed"}))
    (own_loras[1] / "adapter_config.json").unlink()
    fresh, stale = Library(lib).fresh(Library(lib).list())
    assert [r.id for r in fresh] == [ids[2]]
    reasons = {r.id: reason for r, reason in stale}
    assert f"adapter_config.json changed since registration (lora_alpha {alpha} -> {2 * alpha})" in reasons[ids[0]]
    assert "adapter_config.json cannot be read now" in reasons[ids[1]]
    out, _ = run_cli(["library", "verify", "--library", lib, "--json"], capsys, monkeypatch, expect=1)
    assert {p["id"]: p["status"] for p in json.loads(out)["problems"]} == {ids[0]: "changed", ids[1]: "changed"}
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "renamed"}))  # what does not matter
    assert ids[0] in {r.id for r in Library(lib).fresh(Library(lib).list())[0]}


def test_an_adapter_config_edited_into_one_peft_refuses_is_stale(tmp_path, own_loras):
    """Registration refuses what PEFT cannot load; an edit after it, into such a config, is a change too (else
    selection's PEFT load or a merge's copied config would meet it)."""
    library = Library(tmp_path / "lib")
    record, = library.add([own_loras[0]])
    config_path = own_loras[0] / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "lora_bias": True, "init_lora_weights": "gaussian"}))
    [(stale, reason)] = library.fresh([record])[1]
    assert stale.id == record.id and "sets lora_bias true with init_lora_weights" in reason


def test_scores_cached_under_one_alpha_never_answer_for_another(tmp_path, tiny_base, own_loras, mc_file):
    """Registered again with another alpha, the same weights get the same id but their cached score (and
    prefilter values) are not served: they were computed with the old scale."""
    library = Library(tmp_path / "lib")
    records = library.add(own_loras)
    data, config = DataConfig(data=str(mc_file), scoring="letter"), SelectConfig(samples=8, k=1)
    first = select(str(tiny_base), data, config, library.directory)
    for path, record in zip(own_loras, records):  # all three: an alpha unlike the others' would be left out
        settings = json.loads((path / "adapter_config.json").read_text())
        (path / "adapter_config.json").write_text(json.dumps({**settings, "lora_alpha": 4 * settings["lora_alpha"]}))
        library.remove(record.id)
    again = library.add(own_loras)
    assert [r.id for r in again] == [r.id for r in records] and again[0].applies != records[0].applies
    second = select(str(tiny_base), data, config, library.directory)
    assert second.stats["scored"] == 3 and not any(s.cached for s in second.ranking)
    old = {s.id: s.loss for s in first.ranking}
    assert all(s.loss != old[s.id] for s in second.ranking)
    third = select(str(tiny_base), data, config, library.directory)  # and the new scores are cached in their place
    assert third.stats["scored"] == 0


def test_select_skips_stale_checkpoints_and_never_serves_a_cached_score_for_changed_bytes(
        tmp_path, tiny_base, own_loras, mc_file, caplog, monkeypatch):

    library = Library(tmp_path / "lib")
    records = library.add(own_loras)
    data, config = DataConfig(data=str(mc_file), scoring="letter"), SelectConfig(samples=8, k=1)
    first = select(str(tiny_base), data, config, library.directory)
    assert {s.id for s in first.ranking} == {r.id for r in records}
    weights = own_loras[0] / "adapter_model.safetensors"
    stat = weights.stat()
    noisy = noisy_copy(own_loras[0], tmp_path / "changed", seed=99) / "adapter_model.safetensors"
    shutil.copyfile(noisy, weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with caplog.at_level(logging.WARNING, logger="mashup.verbs"):
        second = select(str(tiny_base), data, config, library.directory)
    assert records[0].id not in {s.id for s in second.ranking}, "the changed checkpoint is not ranked"
    assert all(s.cached for s in second.ranking) and second.stats["scored"] == 0
    assert [r["id"] for r in second.rejected] == [records[0].id] and "stale" in second.rejected[0]["reason"]
    warnings = [r.getMessage() for r in caplog.records if records[0].id in r.getMessage()]
    assert len(warnings) == 1 and "weights changed" in warnings[0]
    # registered again, the changed bytes are another checkpoint: scored afresh, not served the old score
    library.remove(records[0].id)
    new = library.add([own_loras[0]])[0]
    third = select(str(tiny_base), data, config, library.directory)
    assert [s.id for s in third.ranking if not s.cached] == [new.id] and third.stats["scored"] == 1
    old_loss = next(s.loss for s in first.ranking if s.id == records[0].id)
    assert next(s.loss for s in third.ranking if s.id == new.id) != old_loss


def test_verify_lists_missing_and_changed_files(tmp_path, own_loras, capsys, monkeypatch):
    lib = tmp_path / "lib"
    ids = json.loads(run_cli(["library", "add", *own_loras, "--library", lib, "--json"], capsys, monkeypatch)[0])
    out, _ = run_cli(["library", "verify", "--library", lib, "--json"], capsys, monkeypatch)
    assert json.loads(out) == {"checked": 3, "ok": 3, "unreadable": 0, "problems": []}
    (own_loras[1] / "adapter_model.safetensors").write_bytes(b"garbage")
    shutil.rmtree(own_loras[2])
    out, _ = run_cli(["library", "verify", "--library", lib, "--json"], capsys, monkeypatch, expect=1)
    problems = {p["id"]: p for p in json.loads(out)["problems"]}
    assert problems[ids[1]]["status"] == "changed" and problems[ids[2]]["status"] == "missing"
    out, _ = run_cli(["library", "verify", "--library", lib], capsys, monkeypatch, expect=1)
    assert "1 of 3 checkpoints ok" in out and ids[1] in out and ids[2] in out


def test_verify_rehashes_even_when_stats_match(tmp_path, own_loras, rehashed):
    library = Library(tmp_path / "lib")
    library.add(own_loras[:2])
    checks = library.verify()
    assert [c.status for c in checks] == ["ok", "ok"] and sorted(rehashed) == ["own0", "own1"]


@pytest.mark.parametrize(("field", "value", "change"), [
    ("exclude_modules", ["up_proj"], "exclude_modules None -> ['up_proj']"),
    ("layers_to_transform", [0], "layers_to_transform None -> [0]"),
    ("layers_pattern", "layers", "layers_pattern None -> 'layers'"),
])
def test_a_narrowing_field_edited_after_registration_makes_the_entry_stale(tmp_path, own_loras, field, value,
                                                                           change):
    """Registration judged the factors against exclude_modules, layers_to_transform and layers_pattern; edited
    later, PEFT may drop factors that selection would still score."""
    library = Library(tmp_path / "lib")
    record = library.add([own_loras[0]])[0]
    config_path = own_loras[0] / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), field: value}))
    fresh, stale = library.fresh(library.list())
    assert fresh == [] and [(r.id, reason) for r, reason in stale] == [
        (record.id, f"adapter_config.json changed since registration ({change}) in {own_loras[0]}")]


@pytest.mark.parametrize(("registered", "now"), [
    ({"layers_to_transform": [0, 1]}, {"layers_to_transform": [1, 0, 1]}),
    ({"layers_to_transform": 0, "target_modules": ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj",
                                                   "model.layers.1.mlp.up_proj", "q_proj", "v_proj", "up_proj"]},
     {"layers_to_transform": [0]}),
    ({"layers_to_transform": [0, 1], "layers_pattern": "layers"}, {"layers_pattern": ["layers"]}),
    ({"exclude_modules": ["k_proj", "o_proj"]}, {"exclude_modules": ["o_proj", "k_proj"]}),
    ({"exclude_modules": []}, {"exclude_modules": None}), ({"layers_to_transform": []}, {"layers_to_transform": None}),
])
def test_a_narrowing_field_rewritten_to_the_same_choice_keeps_the_entry_fresh(tmp_path, own_loras, registered, now):
    """PEFT reads layers_to_transform 0 as [0], names as a set and an empty list as none; the record keeps the
    fields as written (so that an older record, kept so, compares the same way)."""
    config_path = own_loras[0] / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **registered}))
    library = Library(tmp_path / "lib")
    record = library.add([own_loras[0]])[0]
    assert {k: v for k, v in record.narrowing.items() if k in registered} == {
        k: v for k, v in registered.items() if k != "target_modules"}
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **now}))
    assert [r.id for r in library.fresh(library.list())[0]] == [record.id]


def test_a_record_registered_before_the_narrowing_fields_were_kept_is_not_compared_on_them(tmp_path, own_loras):
    library = Library(tmp_path / "lib")
    record = library.add([own_loras[0]])[0]
    with sqlite3.connect(library.db_path) as conn:  # as an older version wrote it: the column empty
        conn.execute("UPDATE checkpoints SET narrowing = NULL")
    assert library.get(record.id).narrowing is None
    config_path = own_loras[0] / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "exclude_modules": ["k_proj"]}))
    assert [r.id for r in library.fresh(library.list())[0]] == [record.id]
