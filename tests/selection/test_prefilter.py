import dataclasses
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from mashup.config import PrefilterConfig
from mashup.io import load_weight_dir
from mashup.library.score_cache import fingerprint
from mashup.selection.arrow import affinity, prototypes
from mashup.selection.engine import ScoringEngine
from mashup.selection.first_order import predicted_change
from mashup.selection.prefilter import _round_robin, keep_count, run_prefilter
from mashup.selection.probe import run_probe
from mashup.selection.signal_cache import SignalCache, weights_key
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
    assert affinity(inputs, [got])[0] == pytest.approx(expected, rel=1e-5)


@pytest.mark.fp32  # a central difference of 3% is below bf16's resolution
def test_first_order_estimate_matches_the_measured_loss_change(tiny_base, tiny_loras, mc_file):
    """The probe's gradient and the estimate agree with a central difference of the engine's loss."""
    workspace, requests = requests_for(tiny_base, mc_file, 12, "cloze")
    settings = workspace.settings(6)
    record = records_for(tiny_loras[:1])[0]
    layout = SlotLayout.of(record)
    probe = run_probe(tiny_base, requests, settings, layout.modules, gradients=True, inputs=False)
    epsilon = 0.03
    shifted = [dataclasses.replace(record, id=f"s{sign}", lora_alpha=sign * epsilon * record.lora_r) for sign in (1, -1)]
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
    assert set(cache.prototypes([old_key])) == {old_key}
    again = run_prefilter(records, requests, workspace.settings(4), tiny_base, config, key, library_dir=lib)
    assert again.probe_tokens == 0 and again.values == first.values, "everything cached: no probe"
    weights = paths[0] / "adapter_model.safetensors"
    changed = {k: (v.flip(0) if "lora_A" in k else v) for k, v in load_file(weights).items()}
    save_file(changed, weights)
    os.utime(weights, ns=(1, 1))  # a rewrite is seen even when size and timestamps look alike
    new_key = weights_key(records[0])
    assert new_key != old_key
    third = run_prefilter(records, requests, workspace.settings(4), tiny_base, config, key, library_dir=lib)
    assert third.probe_tokens > 0
    stored = cache.prototypes([new_key])[new_key]
    layout = SlotLayout.of(records[0])
    for module, vector in prototypes(changed, layout.modules).items():
        assert torch.allclose(stored[module], vector, atol=1e-3)  # stored as float16
    assert third.values["arrow"][records[1].id] == pytest.approx(first.values["arrow"][records[1].id])
    assert third.values["arrow"][records[0].id] != pytest.approx(first.values["arrow"][records[0].id])


def test_keep_count_and_round_robin():
    assert keep_count(1000, PrefilterConfig(keep=0.1, min_keep=32)) == 100
    assert keep_count(100, PrefilterConfig(keep=0.1, min_keep=32)) == 32
    assert keep_count(10, PrefilterConfig(keep=0.1, min_keep=32)) == 10
    assert keep_count(1000, PrefilterConfig(keep=50, min_keep=1)) == 50
    assert _round_robin([["a", "b", "c", "d"], ["c", "a", "e", "f"]], 4) == {"a", "c", "b", "e"}
    assert _round_robin([["a", "b"], ["a", "b"]], 5) == {"a", "b"}
