import dataclasses
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mashup.config import PrefilterConfig
from mashup.io import load_weight_dir
from mashup.library.score_cache import fingerprint
from mashup.selection.arrow import affinity, prototypes, prototypes_of, unit_inputs
from mashup.selection.engine import ScoringEngine
from mashup.selection.factors import stack_factors
from mashup.selection.first_order import predicted_change, predicted_changes
from mashup.selection.prefilter import keep_count, run_prefilter
from mashup.selection.probe import run_probe
from mashup.selection.signal_cache import SignalCache, weights_key
from mashup.selection.signal_ranking import _round_robin
from mashup.selection.slots import SlotLayout
from tests.selection.helpers import records_for, requests_for

PREFIX = "base_model.model."


def _factors(generator, modules, r=3, shapes=((7, 5), (4, 6))):
    tensors = {}
    for module, (out_features, in_features) in zip(modules, shapes):
        tensors[f"{PREFIX}{module}.lora_A.weight"] = torch.randn(r, in_features, generator=generator)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = torch.randn(out_features, r, generator=generator)
    return tensors


def test_first_order_equals_the_dense_inner_product():
    generator = torch.Generator().manual_seed(0)
    modules = ["layers.0.q", "layers.1.up"]
    tensors = _factors(generator, modules)
    grads = {m: torch.randn(tensors[f"{PREFIX}{m}.lora_B.weight"].shape[0],
                            tensors[f"{PREFIX}{m}.lora_A.weight"].shape[1], generator=generator) for m in modules}
    dense = sum((grads[m] * (tensors[f"{PREFIX}{m}.lora_B.weight"] @ tensors[f"{PREFIX}{m}.lora_A.weight"])).sum()
                for m in modules)
    assert predicted_change(grads, tensors, 0.5) == pytest.approx(0.5 * float(dense), rel=1e-5)


def test_signals_batched_over_adapters_equal_one_at_a_time():
    """Stacked adapters (fp32 and bf16 mixed) give each one's own first-order value and prototypes."""
    generator = torch.Generator().manual_seed(2)
    modules = ["layers.0.q", "layers.1.up"]
    adapters = [_factors(generator, modules) for _ in range(3)]
    adapters[1] = {k: v.bfloat16() for k, v in adapters[1].items()}
    grads = {m: torch.randn(7 if m.endswith("q") else 4, 5 if m.endswith("q") else 6, generator=generator)
             for m in modules}
    batched = predicted_changes(grads, stack_factors(adapters, modules), [0.5, 2.0, 1.0])
    assert batched == pytest.approx([predicted_change(grads, t, s) for t, s in zip(adapters, [0.5, 2.0, 1.0])],
                                    rel=1e-5)
    assert len(set(batched)) == 3
    stacked = prototypes_of(stack_factors(adapters, modules))
    for c, tensors in enumerate(adapters):
        for module, vector in prototypes(tensors, modules).items():
            assert abs(float(stacked[module][c] @ vector)) == pytest.approx(1.0, abs=1e-5)
    # dependent rows of A (a singular A A^T) take the QR route: here B A has rank 1, v = A's row direction
    repeated = {k: (v[:1].expand_as(v).clone() if "lora_A" in k else v) for k, v in adapters[0].items()}
    for module, vectors in prototypes_of(stack_factors([adapters[2], repeated], modules)).items():
        row = repeated[f"{PREFIX}{module}.lora_A.weight"][0]
        assert abs(float(vectors[1] @ row / row.norm())) == pytest.approx(1.0, abs=1e-5)


def test_arrow_prototype_is_the_top_right_singular_vector_of_the_dense_update():
    generator = torch.Generator().manual_seed(1)
    modules = ["a", "b"]
    tensors = _factors(generator, modules)
    got = prototypes(tensors, modules)
    for m in modules:
        dense = tensors[f"{PREFIX}{m}.lora_B.weight"] @ tensors[f"{PREFIX}{m}.lora_A.weight"]
        top = torch.linalg.svd(dense.double()).Vh[0].float()
        assert abs(float(got[m] @ top)) == pytest.approx(1.0, abs=1e-5)
        assert float(got[m].norm()) == pytest.approx(1.0, abs=1e-5)
    inputs = {m: torch.randn(9, got[m].shape[0], generator=generator) for m in modules}
    expected = sum(float((inputs[m] / inputs[m].norm(dim=1, keepdim=True) @ got[m]).abs().mean()) for m in modules) / 2
    layout = [(m, got[m].shape[0]) for m in modules]
    row = torch.cat([got[m] for m in modules])
    units = unit_inputs(inputs, torch.device("cpu"))
    assert affinity(units, row[None], layout)[0] == pytest.approx(expected, rel=1e-5)
    other = torch.randn(row.shape[0], generator=generator)
    both = affinity(units, torch.stack([row, other]).half(), layout)  # any float dtype, one row per candidate
    assert both[0] == pytest.approx(expected, rel=1e-3) and both[1] != pytest.approx(expected, rel=1e-3)


@pytest.mark.fp32  # a central difference of 3% is below bf16's resolution
def test_first_order_estimate_matches_the_measured_loss_change(tiny_base, tiny_loras, mc_file):
    """The probe's gradient and the estimate agree with a central difference of the engine's loss."""
    workspace, requests = requests_for(tiny_base, mc_file, 12, "cloze")
    settings = workspace.settings(6)
    record = records_for(tiny_loras[:1])[0]
    layout = SlotLayout.of(record)
    probe = run_probe(tiny_base, requests, settings, layout.modules, gradients=True, inputs=False)
    epsilon = 0.03
    shifted = [dataclasses.replace(record, id=f"s{sign}", lora_alpha=sign * epsilon * record.lora_r)
               for sign in (1, -1)]
    plus, minus = ScoringEngine(tiny_base, requests, settings, adapters_per_forward=1).score(shifted)
    measured = (plus.loss - minus.loss) / 2
    predicted = predicted_change(probe.gradients, load_weight_dir(tiny_loras[0]), epsilon)
    assert measured == pytest.approx(predicted, rel=0.01)
    assert abs(predicted) > 1e-4


def test_prototypes_are_cached_and_recomputed_when_the_bytes_change(tmp_path, tiny_base, tiny_loras, mc_file):
    import shutil

    workspace, requests = requests_for(tiny_base, mc_file, 8, "letter")
    paths = [shutil.copytree(p, tmp_path / p.name) for p in tiny_loras]
    records = records_for(paths)
    config = PrefilterConfig(signals=["arrow"], keep=1, min_keep=1)
    key = fingerprint(tiny_base, requests)
    lib = tmp_path / "lib"
    first = run_prefilter(records, requests, workspace.settings(4), tiny_base, config, key, library_dir=lib)
    cache = SignalCache(lib)
    old_key = weights_key(records[0])
    layout = SlotLayout.of(records[0])
    rows = [(m, records[0].shapes[f"{PREFIX}{m}.lora_A.weight"][1]) for m in layout.modules]
    assert set(cache.prototypes([old_key], rows)) == {old_key}
    assert cache.prototypes([old_key], rows[:-1]) == {}, "a row cut for another layout reads as missing"
    again = run_prefilter(records, requests, workspace.settings(4), tiny_base, config, key, library_dir=lib)
    assert again.probe_tokens == 0 and again.values == first.values, "everything cached: no probe"
    assert first.probe_seconds > 0 and again.probe_seconds == 0
    weights = paths[0] / "adapter_model.safetensors"
    changed = {k: (v.flip(0) if "lora_A" in k else v) for k, v in load_file(weights).items()}
    save_file(changed, weights)
    os.utime(weights, ns=(1, 1))  # a rewrite is seen even when size and timestamps look alike
    new_key = weights_key(records[0])
    assert new_key != old_key
    third = run_prefilter(records, requests, workspace.settings(4), tiny_base, config, key, library_dir=lib)
    assert third.probe_tokens > 0
    stored = cache.prototypes([new_key], rows)[new_key].split([size for _, size in rows])
    for got, (module, vector) in zip(stored, prototypes(changed, layout.modules).items()):
        assert torch.allclose(got.float(), vector, atol=1e-3)  # stored as float16
    assert third.values["arrow"][records[1].id] == pytest.approx(first.values["arrow"][records[1].id])
    assert third.values["arrow"][records[0].id] != pytest.approx(first.values["arrow"][records[0].id])


def test_arrow_alone_reads_no_adapter_once_its_prototypes_are_cached(tmp_path, tiny_base, tiny_loras, mc_file,
                                                                   monkeypatch):
    """A new target (another sample) needs only the probe and the cached prototypes: the kept set costs no read
    of any candidate, which is what lets the prefilter cut a halving's first round (docs/selection.md, the cost
    model)."""
    from mashup.selection import factors

    workspace, requests = requests_for(tiny_base, mc_file, 12, "letter")
    records = records_for(tiny_loras)
    config = PrefilterConfig(signals=["arrow"], keep=1, min_keep=1)
    settings, lib = workspace.settings(4), tmp_path / "lib"
    run_prefilter(records, requests[:6], settings, tiny_base, config, "first target", library_dir=lib)
    fresh = run_prefilter(records, requests[6:], settings, tiny_base, config, "second target")  # no cache

    def no_read(*args, **kwargs):
        raise AssertionError("a candidate's factors were read")

    monkeypatch.setattr(factors.FactorReader, "read", no_read)
    warm = run_prefilter(records, requests[6:], settings, tiny_base, config, "second target", library_dir=lib)
    assert warm.probe_tokens > 0, "a new target: the probe runs"
    assert warm.values["arrow"] == fresh.values["arrow"]  # cold runs round the prototypes as the cache keeps them
    assert [r.id for r in warm.kept] == [r.id for r in fresh.kept] and len(warm.kept) == 1
    with pytest.raises(AssertionError, match="factors were read"):  # the check bites: first-order must read them
        run_prefilter(records, requests[6:], settings, tiny_base, PrefilterConfig(keep=1, min_keep=1),
                      "third target", library_dir=lib)


def test_arrow_values_do_not_depend_on_how_many_rows_are_matched_at_once(tiny_base, tiny_loras, mc_file,
                                                                         monkeypatch):
    from mashup.selection import prefilter

    workspace, requests = requests_for(tiny_base, mc_file, 6, "letter")
    records = records_for(tiny_loras)
    config = PrefilterConfig(signals=["arrow"], keep=1, min_keep=1)
    whole = run_prefilter(records, requests, workspace.settings(3), tiny_base, config, "key").values["arrow"]
    monkeypatch.setattr(prefilter, "ARROW_ROWS", 2)  # 3 candidates: a chunk of 2 and one of 1
    chunked = run_prefilter(records, requests, workspace.settings(3), tiny_base, config, "key").values["arrow"]
    assert chunked.keys() == whole.keys() and chunked == pytest.approx(whole, rel=1e-6)


def test_cached_prototype_rows_are_read_a_block_at_a_time(tmp_path, tiny_base, tiny_loras, mc_file, monkeypatch):
    """A warm prefilter holds a block of the library's rows at a time (2.2 MB an adapter of a 7B Llama),
    and copies of one file, which share its cached row, each get its value."""
    from mashup.selection import prefilter

    copy = shutil.copytree(tiny_loras[0], tmp_path / "copy")  # same bytes and mtimes: same weights key
    records = records_for([*tiny_loras, copy])
    records[-1].id = "copy"
    assert weights_key(records[-1]) == weights_key(records[0])
    workspace, requests = requests_for(tiny_base, mc_file, 6, "letter")
    config = PrefilterConfig(signals=["arrow"], keep=1, min_keep=1)
    settings, lib = workspace.settings(3), tmp_path / "lib"
    cold = run_prefilter(records, requests, settings, tiny_base, config, "key").values["arrow"]
    prefilter.cache_prototypes(records, lib)
    blocks = []
    real_blocks = SignalCache.prototype_blocks

    def spy(self, keys, layout, rows):
        for found, block in real_blocks(self, keys, layout, rows):
            blocks.append(len(block))
            yield found, block

    llama_7b = [("down" if i % 7 == 6 else "other", 11008 if i % 7 == 6 else 4096) for i in range(7 * 32)]
    assert prefilter.arrow_block_rows(llama_7b) == 58, "2.2 MB rows: at most ARROW_BYTES of them at once"
    monkeypatch.setattr(SignalCache, "prototype_blocks", spy)
    monkeypatch.setattr(prefilter, "ARROW_ROWS", 2)
    warm = run_prefilter(records, requests, settings, tiny_base, config, "key", library_dir=lib).values["arrow"]
    assert blocks == [2, 1], "three distinct rows, two at a time"
    assert warm.keys() == cold.keys() and len(warm) == 4 and warm == pytest.approx(cold, rel=1e-6)
    assert warm["copy"] == warm[records[0].id] and cold["copy"] == cold[records[0].id], "one row for both"


def test_registering_caches_the_prototypes_a_prefilter_would_compute(tmp_path, tiny_base, tiny_loras, mc_file,
                                                                     capsys, monkeypatch):
    """``library add`` caches each adapter's Arrow prototypes, equal to the bit to what the prefilter computes, so
    the first prefilter by Arrow reads no candidate."""
    from mashup.library import Library
    from mashup.selection import factors
    from mashup.selection.prefilter import cache_prototypes
    from tests.test_cli import run_cli

    lib = tmp_path / "lib"
    run_cli(["library", "add", *tiny_loras, "--library", lib], capsys, monkeypatch)
    records = Library(lib).list()
    assert cache_prototypes(records, lib) == 0, "all three were cached by the add"
    workspace, requests = requests_for(tiny_base, mc_file, 6, "letter")
    config = PrefilterConfig(signals=["arrow"], keep=1, min_keep=1)
    fresh = run_prefilter(records, requests, workspace.settings(3), tiny_base, config, "key")  # no cache

    def no_read(*args, **kwargs):
        raise AssertionError("a candidate's factors were read")

    monkeypatch.setattr(factors.FactorReader, "read", no_read)
    warm = run_prefilter(records, requests, workspace.settings(3), tiny_base, config, "key", library_dir=lib)
    assert warm.values["arrow"] == fresh.values["arrow"]


def test_a_prototype_cache_that_cannot_be_written_is_a_warning(tmp_path, tiny_loras, caplog):
    from mashup.selection.prefilter import warm_prototype_cache

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # the cache's dir is a file: SQLite cannot open selection.sqlite under it
    with caplog.at_level("WARNING"):
        warm_prototype_cache(records_for(tiny_loras), blocker)
    assert "prefilter cache" in caplog.text and "goes on without its cache" in caplog.text
    assert len(caplog.records) == 1, "one warning, and no more work once the cache is off"


def test_a_library_whose_prefilter_cache_cannot_be_opened_is_filtered_without_it(tmp_path, tiny_base, tiny_loras,
                                                                                 mc_file, caplog):
    workspace, requests = requests_for(tiny_base, mc_file, 6, "letter")
    records = records_for(tiny_loras)
    config = PrefilterConfig(signals=["arrow"], keep=1, min_keep=1)
    blocker = tmp_path / "library"
    blocker.write_text("")  # not a dir: nothing can be created under it (a read-only library, for root too)
    fresh = run_prefilter(records, requests, workspace.settings(3), tiny_base, config, "key")
    with caplog.at_level("WARNING"):
        blocked = run_prefilter(records, requests, workspace.settings(3), tiny_base, config, "key",
                                library_dir=blocker)
    assert blocked.values == fresh.values and "goes on without its cache" in caplog.text


def test_a_cut_of_a_small_pool_warns_once(tiny_base, tiny_loras, mc_file, caplog):
    """The signals misrank small pools (a target's exhaustive top 1 ranked 52nd and 81st of 96): any cut under
    ``SAFE_CUT_MIN_POOL`` candidates warns, naming the selector to use; no cut, no warning."""
    workspace, requests = requests_for(tiny_base, mc_file, 6, "letter")
    records, settings = records_for(tiny_loras), workspace.settings(3)
    warned = {}
    for name, signals, keep in [("arrow", ["arrow"], 0.5), ("both", ["first_order", "arrow"], 0.5),
                                ("keeps all", ["arrow"], 0.99)]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="mashup.selection.prefilter"):
            run_prefilter(records, requests, settings, tiny_base,
                          PrefilterConfig(signals=signals, keep=keep, min_keep=1), "key")
        warned[name] = [r.getMessage() for r in caplog.records]
    for name in ("arrow", "both"):
        assert len(warned[name]) == 1 and "too weak to cut 3 candidates (under 500)" in warned[name][0]
        assert "--selector halving" in warned[name][0]
    assert warned["keeps all"] == []


def test_keep_count_and_round_robin():
    assert keep_count(1000, PrefilterConfig(keep=0.1, min_keep=32)) == 100
    assert keep_count(100, PrefilterConfig(keep=0.1, min_keep=32)) == 32
    assert keep_count(10, PrefilterConfig(keep=0.1, min_keep=32)) == 10
    assert keep_count(1000, PrefilterConfig(keep=50, min_keep=1)) == 50
    assert _round_robin([["a", "b", "c", "d"], ["c", "a", "e", "f"]], 4) == {"a", "c", "b", "e"}
    assert _round_robin([["a", "b"], ["a", "b"]], 5) == {"a", "b"}


def test_prefilter_ranks_every_rank_of_the_probed_modules_and_keeps_other_layouts(tmp_path, tiny_base, tiny_loras,
                                                                                     mc_file):
    """Ranks 4 and 2 on the same modules are both ranked (their factors stack per rank); an adapter on
    other modules than most, which the probe did not cover, is kept unranked."""
    from tests.tiny import save_tiny_lora

    workspace, requests = requests_for(tiny_base, mc_file, 6, "cloze")
    rank2 = save_tiny_lora(tiny_base, tmp_path / "rank2", seed=7, r=2)
    q_only = save_tiny_lora(tiny_base, tmp_path / "q-only", seed=8, targets=("q_proj",))
    records = records_for([*tiny_loras, rank2, q_only])
    config = PrefilterConfig(keep=2, min_keep=1)
    result = run_prefilter(records, requests, workspace.settings(3), tiny_base, config, "key")
    ranked = {r.id for r in records[:4]}
    assert set(result.values["first_order"]) == ranked and set(result.values["arrow"]) == ranked
    assert records[4] in result.kept and len(result.kept) == 3, "the best 2 of the 4 ranked, and the other layout"
    reordered = run_prefilter(records[::-1], requests, workspace.settings(3), tiny_base, config, "key")
    assert reordered.values == result.values and {r.id for r in reordered.kept} == {r.id for r in result.kept}, \
        "the most common modules are ranked, whichever adapter comes first"
    single = predicted_change(run_probe(tiny_base, requests, workspace.settings(3), SlotLayout.of(records[3]).modules,
                                        gradients=True, inputs=False).gradients, load_weight_dir(rank2),
                              records[3].lora_scale)
    assert result.values["first_order"][records[3].id] == pytest.approx(single, rel=1e-4)


def test_factors_read_from_files_equal_the_loaded_ones_and_a_changed_file_is_an_error(tmp_path, tiny_loras):
    """One block per file where it is laid out as one, else loaded and joined; both as loaded."""
    from mashup.errors import CheckpointError
    from mashup.selection.factors import FactorReader

    mixed = tmp_path / "mixed"  # two dtypes in one file: no single block
    shutil.copytree(tiny_loras[1], mixed)
    tensors = load_file(str(mixed / "adapter_model.safetensors"))
    first = sorted(tensors)[0]
    save_file({**tensors, first: tensors[first].bfloat16()}, str(mixed / "adapter_model.safetensors"))
    half = tmp_path / "bf16"  # one block in another dtype: converted as it is copied
    shutil.copytree(tiny_loras[2], half)
    save_file({k: v.bfloat16() for k, v in load_file(str(half / "adapter_model.safetensors")).items()},
              str(half / "adapter_model.safetensors"))
    records = records_for([tiny_loras[0], mixed, half])
    modules = SlotLayout.of(records[0]).modules
    reader = FactorReader(torch.device("cpu"))
    reader.read(records[1:2], modules)  # a smaller read first: the buffer grows
    read = reader.read(records, modules)
    loaded = stack_factors([load_weight_dir(path) for path in (tiny_loras[0], mixed, half)], modules)
    assert read.keys() == loaded.keys()
    assert all(torch.equal(read[m][0], loaded[m][0]) and torch.equal(read[m][1], loaded[m][1]) for m in modules)
    ahead = FactorReader(torch.device("cpu"), read_ahead=True)  # files read on threads first (mixed: as None)
    assert not reader.read_ahead  # off on a CPU by default
    ahead.prefetch(records)
    assert [r.queued for r in ahead._readers.values()] == [3]
    read = ahead.read(records, modules)
    assert all(torch.equal(read[m][0], loaded[m][0]) and torch.equal(read[m][1], loaded[m][1]) for m in modules)
    assert [r.queued for r in ahead._readers.values()] == [0]
    wider = {k: torch.cat([v, v]) if k == first else v for k, v in tensors.items()}
    save_file(wider, str(mixed / "adapter_model.safetensors"))  # after registration: the record is stale
    with pytest.raises(CheckpointError, match="differ from what the library recorded"):
        reader.read(records, modules)


def test_signals_in_chunks_equal_one_adapter_at_a_time(tiny_base, tiny_loras, mc_file):
    from mashup.selection.prefilter import compute_signals

    workspace, requests = requests_for(tiny_base, mc_file, 6, "cloze")
    records = records_for(tiny_loras)
    modules = SlotLayout.of(records[0]).modules
    probe = run_probe(tiny_base, requests, workspace.settings(3), modules, gradients=True, inputs=True)
    missing = {"first_order": records, "arrow": records[1:]}  # some candidates need one signal only
    keys = {r.id: r.id for r in records}
    chunked = compute_signals(missing, probe, modules, keys, None, torch.device("cpu"), chunk=3)
    alone = compute_signals(missing, probe, modules, keys, None, torch.device("cpu"), chunk=1)
    assert chunked.keys() == alone.keys() == {"first_order", "arrow"} and len(chunked["arrow"]) == len(records) - 1
    for signal in chunked:
        assert chunked[signal] == pytest.approx(alone[signal], rel=1e-5)
