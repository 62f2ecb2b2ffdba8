"""Full fine-tunes whose files name their weights otherwise than the model built from them: transformers 5 builds
Gemma-3's multimodal model as ``model.language_model.*`` and saves it as ``language_model.model.*`` (its head as
``language_model.lm_head.weight``), and fuses Mixtral's per-expert weights on load. Registration, the swap into a
base for scoring, and merges go by the files' names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, Gemma3Config, MixtralConfig

import mashup.io.files as io_files
from mashup.config import MergeConfig
from mashup.errors import CheckpointError
from mashup.library import Library
from mashup.library.base_shapes import BaseShapes
from mashup.library.records import inspect_checkpoint
from mashup.merging import merge_checkpoints
from mashup.models import load_full_weights_into, load_model
from mashup.selection.engine import ScoringEngine
from tests.merging.helpers import records
from tests.selection.helpers import requests_for
from tests.tiny import build_tokenizer

SAVED_HEAD, SAVED_EMBEDDINGS = "language_model.lm_head.weight", "language_model.model.embed_tokens.weight"


def _gemma3(out: Path) -> Path:
    """A tiny Gemma-3 multimodal base (tied head), saved by transformers: no head stored."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    vocab = len(tokenizer) + 3  # and the image tokens
    config = Gemma3Config(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, image_token_index=vocab - 1, boi_token_index=vocab - 3, eoi_token_index=vocab - 2)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    assert SAVED_EMBEDDINGS in load_file(out / "model.safetensors")
    return out


def _mixtral(out: Path) -> Path:
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    assert "model.layers.0.block_sparse_moe.experts.0.w1.weight" in load_file(out / "model.safetensors")
    return out


def _full(base: Path, out: Path, seed: int, head_offset: float | None = None) -> Path:
    """A full fine-tune of ``base`` saved by transformers; with ``head_offset``, its file stores the head too (as
    some exporters do), that far from the embeddings."""
    model = load_model(base)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(out)
    if head_offset is not None:
        weights = load_file(out / "model.safetensors")
        weights[SAVED_HEAD] = weights[SAVED_EMBEDDINGS] + head_offset
        save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _same_weights(model: torch.nn.Module, other: torch.nn.Module) -> bool:
    theirs = other.state_dict()
    return all(torch.equal(tensor, theirs[name]) for name, tensor in model.state_dict().items())


def test_a_composite_full_finetune_that_stores_its_head_registers(tmp_path: Path) -> None:
    base = _gemma3(tmp_path / "base")
    full = _full(base, tmp_path / "full", seed=1, head_offset=0.0)
    assert [r.kind for r in Library(tmp_path / "lib").add([full], base=str(base), task="t")] == ["full"]


@pytest.mark.parametrize("build", [_gemma3, _mixtral])
def test_a_full_finetune_saved_under_other_names_swaps_into_its_base(tmp_path: Path, build) -> None:
    base = build(tmp_path / "base")
    full = _full(base, tmp_path / "full", seed=1)
    model = load_model(base)
    load_full_weights_into(model, full)
    assert _same_weights(model, load_model(full)) and not _same_weights(model, load_model(base))


def test_a_composite_full_finetune_whose_stored_head_differs_is_refused_on_swap(tmp_path: Path) -> None:
    base = _gemma3(tmp_path / "base")
    full = _full(base, tmp_path / "full", seed=1, head_offset=0.5)
    with pytest.raises(CheckpointError, match="its lm_head.weight differs from") as caught:
        load_full_weights_into(load_model(base), full)
    assert caught.value.where == str(full)


@pytest.mark.parametrize("method", ["dare_ties", "ties"])
def test_composite_finetunes_storing_their_tied_head_stay_tied_through_a_merge(tmp_path: Path, method: str) -> None:
    """The stored head is found under its saved name and left out, for transformers to tie again on load (merged on
    its own, a sparsification would make it differ from the merged embeddings: refused on load)."""
    base = _gemma3(tmp_path / "base")
    fulls = [_full(base, tmp_path / f"full{i}", seed=i, head_offset=0.0) for i in range(2)]
    out = tmp_path / "out"
    merge_checkpoints(records(fulls, base), MergeConfig(method=method, density=0.5), out, base_model_dir=base)
    assert SAVED_HEAD not in load_file(out / "model.safetensors")
    model = load_model(out)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def _gemma3_lora(base: Path, out: Path, *, older_names: bool = False, wider: bool = False) -> Path:
    """An adapter of ``base`` saved by PEFT (by the model's module names); ``older_names``: renamed as adapters
    saved under older transformers were (``language_model.model.*``); ``wider``: one lora_A a column too wide."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=2, lora_alpha=4, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    get_peft_model(load_model(base), config).save_pretrained(out)
    file = out / "adapter_model.safetensors"
    weights = load_file(file)
    if older_names:
        weights = {name.replace("base_model.model.model.language_model.", "base_model.model.language_model.model."):
                   tensor for name, tensor in weights.items()}
    if wider:
        name = sorted(n for n in weights if ".lora_A." in n)[0]
        weights[name] = torch.cat([weights[name], weights[name][:, :1]], dim=1)
    save_file(weights, str(file), metadata={"format": "pt"})
    return out


def test_a_composite_models_adapter_registers_and_its_factors_are_fitted_to_the_built_model(tmp_path: Path,
                                                                                            monkeypatch) -> None:
    """PEFT names the modules as the model builds them (model.language_model.*), not as its files do: the factors
    are checked against the built model's shapes (built once per add)."""
    import mashup.model_checks as model_checks

    base = _gemma3(tmp_path / "base")
    built: list[Path] = []
    real = model_checks.model_on_meta
    monkeypatch.setattr(model_checks, "model_on_meta", lambda model_dir: built.append(model_dir) or real(model_dir))
    loras = [_gemma3_lora(base, tmp_path / f"lora{i}") for i in range(2)]
    assert [r.kind for r in Library(tmp_path / "lib").add(loras, base=str(base), task="t")] == ["lora"] * 2
    assert built == [base]
    wider = _gemma3_lora(base, tmp_path / "wider", wider=True)
    with pytest.raises(CheckpointError, match=r"model.language_model.layers.0.self_attn.q_proj.lora_A.weight has "
                                              r"shape \[2, 33\], which does not fit"):
        Library(tmp_path / "lib").add([wider], base=str(base), task="t")


def test_an_adapter_saved_under_older_module_names_is_refused_with_how_to_resave_it(tmp_path: Path) -> None:
    """Selection copies factors into the modules they name, and the built model has none of these."""
    base = _gemma3(tmp_path / "base")
    older = _gemma3_lora(base, tmp_path / "older", older_names=True)
    with pytest.raises(CheckpointError, match="adapter module language_model.model.layers.0.self_attn.q_proj is not "
                                              "a module of the model base") as caught:
        Library(tmp_path / "lib").add([older], base=str(base), task="t")
    assert caught.value.where == str(older) and "save_pretrained(NEW_DIR)" in caught.value.fix
    assert not (tmp_path / "lib").exists() or Library(tmp_path / "lib").list() == []


def test_selection_scores_a_composite_models_adapter_and_names_one_under_older_module_names(tmp_path: Path,
                                                                                          mc_file: Path) -> None:
    """An adapter registered before registration refused older module names: one line naming it, not a traceback
    (nor retries) from the slots."""
    base = _gemma3(tmp_path / "base")
    workspace, requests = requests_for(base, mc_file, 4, "cloze")
    adapter = inspect_checkpoint(_gemma3_lora(base, tmp_path / "lora"))
    older = inspect_checkpoint(_gemma3_lora(base, tmp_path / "older", older_names=True),
                               base_shapes=BaseShapes(lambda base: None, lambda base: None))
    for record, name in ((adapter, "lora"), (older, "older")):
        record.id = name
    (score,) = ScoringEngine(base, requests, workspace.settings(4)).score([adapter])
    assert 0 < score.loss < 20
    with pytest.raises(CheckpointError, match="adapter module language_model.model.layers.0.self_attn.q_proj is not "
                                              "a module of the model the base builds") as caught:
        ScoringEngine(base, requests, workspace.settings(4)).score([older])
    assert caught.value.where == older.path
    with pytest.raises(CheckpointError, match="adapter module language_model.model.layers.0.self_attn.q_proj is not "
                                              "a module of the model the base builds"):  # through PEFT's modules
        ScoringEngine(base, requests, workspace.settings(4)).score([adapter, older])


def test_an_adapter_under_older_module_names_is_refused_alike_where_peft_loads_it(tmp_path: Path) -> None:
    """PEFT renames such an adapter's modules as it loads it (eval --adapter, train --init, selection's PEFT path),
    while the library's slots and merges take them as written: one refusal, with how to re-save it."""
    from mashup.models import attach_adapter

    base = _gemma3(tmp_path / "base")
    older = _gemma3_lora(base, tmp_path / "older", older_names=True)
    with pytest.raises(CheckpointError, match="adapter module language_model.model.layers.0.self_attn.q_proj is not "
                                              "a module of the model the base builds") as caught:
        attach_adapter(load_model(base), older, trainable=False)
    assert caught.value.where == str(older) and "save_pretrained(NEW_DIR)" in caught.value.fix


def test_a_per_expert_adapter_of_a_model_that_fuses_its_experts_is_refused_without_a_resave_fix(tmp_path: Path
                                                                                                ) -> None:
    """PEFT would re-save it as target_parameters, which registration refuses: no fix that leads there."""
    import json

    base = _mixtral(tmp_path / "base")
    adapter = tmp_path / "experts"
    adapter.mkdir()
    module = "base_model.model.model.layers.0.block_sparse_moe.experts.0.w1"
    save_file({f"{module}.lora_A.weight": torch.zeros(2, 32), f"{module}.lora_B.weight": torch.zeros(64, 2)},
              str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["w1"], "base_model_name_or_path": str(base)}))
    with pytest.raises(CheckpointError, match="adapter module model.layers.0.block_sparse_moe.experts.0.w1 is not a "
                                              "module") as caught:
        Library(tmp_path / "lib").add([adapter], task="t")
    assert "per-expert LoRA" in caught.value.fix and "save_pretrained" not in caught.value.fix


@pytest.mark.parametrize("method", ["fisher", "regmean"])
def test_statistics_of_composite_full_finetunes_reach_the_weights_their_files_name(tmp_path: Path, method: str,
                                                                                    caplog) -> None:
    """Statistics are estimated on the built model (model.language_model.*) and read by the files' names
    (language_model.model.*): none of the text model's left unmatched, so none of them falls back to a plain average."""
    from mashup.merging.statistics import compute_statistics
    from mashup.merging.plan import build_plan

    base = _gemma3(tmp_path / "base")
    fulls = [_full(base, tmp_path / f"full{i}", seed=i) for i in range(2)]
    plan = build_plan(records(fulls, base), MergeConfig(method=method))
    tokens = torch.randint(0, 100, (2, 8))
    batches = [{"input_ids": tokens, "attention_mask": torch.ones_like(tokens), "labels": tokens}]
    statistics = compute_statistics(plan, base, batches)
    layer = "language_model.model.layers.0.mlp.up_proj.weight"
    assert all(layer in stats for stats in statistics)
    out = tmp_path / "out"
    merge_checkpoints(records(fulls, base), MergeConfig(method=method), out, base_model_dir=base,
                      calibration_batches=batches)
    # RegMean names the first of the weights it averages, by name: the vision tower's, which text never runs, sort
    # after every language_model.* one
    assert not [r for r in caplog.records if "averaged" in r.getMessage() and "language_model" in r.getMessage()]
    merged, inputs = load_file(out / "model.safetensors"), [load_file(f / "model.safetensors") for f in fulls]
    assert not torch.allclose(merged[layer], (inputs[0][layer] + inputs[1][layer]) / 2)


def test_an_adapter_of_a_plain_decoder_saved_under_its_files_names_is_refused_at_registration(tmp_path: Path
                                                                                             ) -> None:
    """Pythia's files hold its head as embed_out.weight, which transformers 5 builds as lm_head: the base's
    config.json does not tell, so the module names are checked against the built model."""
    import json

    from peft import LoraConfig, get_peft_model
    from transformers import GPTNeoXConfig

    tokenizer = build_tokenizer()
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, tie_word_embeddings=False, eos_token_id=0, pad_token_id=0)
    base = tmp_path / "base"
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    weights = load_file(base / "model.safetensors")
    save_file({name.replace("lm_head.", "embed_out."): t for name, t in weights.items()},
              str(base / "model.safetensors"), metadata={"format": "pt"})
    adapter = tmp_path / "lora"
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["query_key_value", "lm_head"], init_lora_weights=False)
    get_peft_model(load_model(base), lora).save_pretrained(adapter, save_embedding_layers=False)
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file({name.replace(".lm_head.", ".embed_out."): t for name, t in weights.items()},
              str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["query_key_value",
                                                                                           "embed_out"]}))
    with pytest.raises(CheckpointError, match="adapter module embed_out is not a module of the model base"):
        Library(tmp_path / "lib").add([adapter], base=str(base), task="t")


def test_a_second_copy_of_the_weights_beside_the_loaded_files_is_not_taken_for_them(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    """Mistral's Hub repos hold consolidated.safetensors (mistral-inference's names) beside transformers' shards or
    model.safetensors: registering a full fine-tune against such a base and merging read the files transformers
    loads (a base's identity too: tests/library/test_identity_loaded_files.py)."""
    from mashup.io import loaded_weight_files
    from tests.tiny import save_tiny_base

    from mashup.workspace import count_parameters

    sharded, single = tmp_path / "sharded", save_tiny_base(tmp_path / "single")
    load_model(single).save_pretrained(sharded, max_shard_size="20KB")
    count = count_parameters(single)
    full, full_copy = _full(single, tmp_path / "full", seed=1), _full(single, tmp_path / "full-copy", seed=2)
    for model_dir in (sharded, single, full_copy):
        save_file({"layers.0.attention.wq.weight": torch.zeros(2, 2)}, str(model_dir / "consolidated.safetensors"))
        assert all(f.name != "consolidated.safetensors" for f in loaded_weight_files(model_dir))
    assert len(loaded_weight_files(sharded)) > 1 and count_parameters(single) == count_parameters(sharded) == count
    added = Library(tmp_path / "lib").add([full, full_copy], base=str(sharded), task="t")
    assert [r.kind for r in added] == ["full", "full"] and "layers.0.attention.wq.weight" not in added[1].shapes
    read = []
    real = io_files.load_weights
    monkeypatch.setattr(io_files, "load_weights", lambda path: read.append(path.name) or real(path))
    model = load_model(sharded)
    load_full_weights_into(model, full_copy)  # the loaded file only, no second load through transformers
    assert read == ["model.safetensors"] and _same_weights(model, load_model(full_copy))
    merge_checkpoints(records([full, full], sharded), MergeConfig(method="ties"), tmp_path / "out",
                      base_model_dir=sharded)
    assert "layers.0.attention.wq.weight" not in load_file(tmp_path / "out" / "model.safetensors")


def test_the_loaded_files_are_picked_as_transformers_picks_them(tmp_path: Path) -> None:
    """model.safetensors before an index; an index's shards, each a file of the dir, at least one, all there."""
    import json

    from mashup.io import loaded_weight_files
    from mashup.merging.full import WeightReader
    from mashup.workspace import count_parameters
    from tests.tiny import save_tiny_base

    base = tmp_path / "sharded"
    load_model(save_tiny_base(tmp_path / "single")).save_pretrained(base, max_shard_size="20KB")
    index = base / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    for names, problem in (({}, "names no shards"), ({"w": "../elsewhere.safetensors"}, "names shard ../elsewhere")):
        index.write_text(json.dumps({"weight_map": names}))
        with pytest.raises(CheckpointError, match=problem):
            loaded_weight_files(base)
    index.write_text(json.dumps({"weight_map": weight_map}))
    shard = sorted(base.glob("model-*.safetensors"))[0]
    shard.rename(tmp_path / shard.name)
    with pytest.raises(CheckpointError, match=f"shard {shard.name} named by model.safetensors.index.json is missing"):
        loaded_weight_files(base)
    for other in sorted(base.glob("model-*.safetensors")):  # every shard gone: still the index's line
        other.rename(tmp_path / other.name)
    for reads in (WeightReader, count_parameters, lambda d: Library(tmp_path / "lib").add([d], base=str(d))):
        with pytest.raises(CheckpointError, match="named by model.safetensors.index.json is missing"):
            reads(base)
    for other in sorted(tmp_path.glob("model-*.safetensors")):
        other.rename(base / other.name)
    save_file({"w": torch.zeros(1)}, str(base / "model.safetensors"))
    assert loaded_weight_files(base) == [base / "model.safetensors"]
