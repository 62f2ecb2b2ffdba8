"""Full fine-tunes: streaming merges equal in-memory ones, sharded inputs and outputs, mergekit YAML."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GemmaConfig, GemmaForCausalLM

from mashup.config import MergeConfig
from mashup.errors import CheckpointError, MergeError
from mashup.merging import export_mergekit_yaml, merge_checkpoints, merge_tensors
from mashup.merging.full import merge_full
from mashup.merging.plan import build_plan
from mashup.models import load_full_weights_into, load_model
from tests.merging.helpers import records
from tests.tiny import save_tiny_full


def state(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def test_streaming_average_equals_in_memory_average(tiny_base: Path, tiny_fulls: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = merge_checkpoints(records(tiny_fulls, tiny_base), MergeConfig(), out, base_model_dir=tiny_base)
    states = [state(p) for p in tiny_fulls]
    merged = state(out)
    assert merged.keys() == states[0].keys()
    for name, tensor in merged.items():
        assert torch.allclose(tensor, sum(s[name] for s in states) / 3, atol=1e-6), name
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(model.model.embed_tokens.weight, merged["model.embed_tokens.weight"])
    assert (out / "tokenizer.json").exists() and report.kind == "full" and report.lora_mode is None


def test_streaming_ties_equals_per_tensor_ties(tiny_base: Path, tiny_fulls: list[Path], tmp_path: Path) -> None:
    config = MergeConfig(method="ties", density=0.5, weights=[1.0, 0.5])
    merge_checkpoints(records(tiny_fulls[:2], tiny_base), config, tmp_path / "out", base_model_dir=tiny_base)
    base, x1, x2 = state(tiny_base), state(tiny_fulls[0]), state(tiny_fulls[1])
    merged = state(tmp_path / "out")
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.norm.weight"):
        expected = merge_tensors("ties", [x1[name], x2[name]], [1.0, 0.5], base[name],
                                 build_plan(records(tiny_fulls[:2], tiny_base), config).params)
        assert torch.equal(merged[name], expected)


def test_sharded_input_and_output(tiny_base: Path, tiny_fulls: list[Path], tmp_path: Path) -> None:
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_fulls[1]).save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    merge_checkpoints(records([tiny_fulls[0], sharded], tiny_base), MergeConfig(), tmp_path / "a")
    merge_checkpoints(records(tiny_fulls[:2], tiny_base), MergeConfig(), tmp_path / "b")
    expected = state(tmp_path / "b")
    for name, tensor in state(tmp_path / "a").items():
        assert torch.equal(tensor, expected[name])
    plan = build_plan(records(tiny_fulls[:2], tiny_base), MergeConfig())
    (tmp_path / "c").mkdir()
    merge_full(plan, tmp_path / "c", tiny_base, max_shard_bytes=50_000)
    index = json.loads((tmp_path / "c" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "c").state_dict()
    assert torch.equal(loaded["model.norm.weight"], expected["model.norm.weight"])


def test_task_vector_methods_need_the_base(tiny_base: Path, tiny_fulls: list[Path], tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="needs the base model"):
        merge_checkpoints(records(tiny_fulls[:2], tiny_base), MergeConfig(method="ties"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_mergekit_yaml(tiny_base: Path, tiny_fulls: list[Path], tiny_loras: list[Path]) -> None:
    config = MergeConfig(method="ties", density=0.4, weights=[1.0, 0.5])
    document = yaml.safe_load(export_mergekit_yaml(records(tiny_fulls[:2], tiny_base), config, str(tiny_base)))
    assert document["merge_method"] == "ties" and document["base_model"] == str(tiny_base)
    assert document["parameters"] == {"normalize": True, "lambda": 1.0}
    assert document["models"][1] == {"model": str(tiny_fulls[1].resolve()), "parameters": {"weight": 0.5,
                                                                                          "density": 0.4}}
    linear = yaml.safe_load(export_mergekit_yaml(records(tiny_fulls[:2], tiny_base), MergeConfig(), "b"))
    assert linear["merge_method"] == "linear" and "base_model" not in linear
    with pytest.raises(MergeError, match="full models only"):
        export_mergekit_yaml(records(tiny_loras[:2]), MergeConfig(), "b")


def test_mergekit_runs_our_yaml_to_the_same_weights(tiny_base: Path, tiny_fulls: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("mergekit.merge")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    config = MergeConfig(method="ties", density=0.5, weights=[1.0, 0.7])
    text = export_mergekit_yaml(records(tiny_fulls[:2], tiny_base), config, str(tiny_base))
    try:
        run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), str(tmp_path / "mk"),
                  options=MergeOptions(copy_tokenizer=False, lazy_unpickle=False))
    except (ImportError, ModuleNotFoundError) as exc:  # mergekit installed without its dependencies
        pytest.skip(f"mergekit cannot run: {exc}")
    merge_checkpoints(records(tiny_fulls[:2], tiny_base), config, tmp_path / "ours", base_model_dir=tiny_base)
    theirs, ours = state(tmp_path / "mk"), state(tmp_path / "ours")
    for name, tensor in ours.items():
        assert torch.allclose(tensor, theirs[name], atol=1e-6), name


def test_copies_model_files_from_the_first_checkpoint_without_base(tiny_fulls: list[Path], tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(tiny_fulls[0], source)
    merge_checkpoints(records([source, tiny_fulls[1]], Path("org/base-not-at-hand")), MergeConfig(), tmp_path / "out")
    assert (tmp_path / "out" / "config.json").read_text() == (source / "config.json").read_text()


def _tied_full(base: Path, out: Path, seed: int, head_offset: float = 0.0, model: torch.nn.Module | None = None
               ) -> Path:
    """A full fine-tune of a tied model (``base``'s, tied; or ``model``, whose config ties) that stores its head too
    (as some exporters do): equal to the embeddings, or ``head_offset`` away from them."""
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(base)
        model.config.tie_word_embeddings = True
    generator = torch.Generator().manual_seed(seed)
    weights = {name: param.detach() + 0.05 * torch.randn(param.shape, generator=generator)
               for name, param in model.named_parameters() if name != "lm_head.weight"}
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"] + head_offset
    out.mkdir()
    save_file({name: t.contiguous() for name, t in weights.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    model.config.save_pretrained(out)
    return out


def _tied_base(base: Path, out: Path) -> Path:
    """``base`` tied and saved by transformers, which stores no head."""
    model = AutoModelForCausalLM.from_pretrained(base)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(out)
    assert "lm_head.weight" not in state(out)
    return out


@pytest.mark.parametrize("method", ["dare_ties", "ties", "average"])
def test_a_tied_head_stored_beside_the_embeddings_stays_tied_through_a_merge(tiny_base: Path, tmp_path: Path,
                                                                            method: str) -> None:
    """Against a base saved by transformers (no head stored): the head is left out, tied again on load."""
    base = _tied_base(tiny_base, tmp_path / "base")
    fulls = [_tied_full(tiny_base, tmp_path / f"tied{i}", seed=i) for i in range(2)]
    out = tmp_path / "out"
    merge_checkpoints(records(fulls, base), MergeConfig(method=method, density=0.5), out, base_model_dir=base)
    assert "lm_head.weight" not in state(out)
    model = load_model(out)  # refuses a head that config.json ties yet holds other values
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_a_config_tied_by_its_class_default_is_tied_through_a_merge(tmp_path: Path) -> None:
    """Gemma's configs leave tie_word_embeddings out (the class default ties): still tied, head left out."""
    torch.manual_seed(0)
    gemma = GemmaForCausalLM(GemmaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=1, head_dim=8))
    fulls = [_tied_full(Path(), tmp_path / f"gemma{i}", seed=i, model=gemma) for i in range(2)]
    for full in fulls:
        config = json.loads((full / "config.json").read_text())
        config.pop("tie_word_embeddings", None)
        (full / "config.json").write_text(json.dumps(config))
    gemma.save_pretrained(tmp_path / "base")
    out = tmp_path / "out"
    merge_checkpoints(records(fulls, tmp_path / "base"), MergeConfig(method="dare_linear", density=0.5), out,
                      base_model_dir=tmp_path / "base")
    model = load_model(out)
    assert "lm_head.weight" not in state(out)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_a_tied_config_with_a_head_of_other_values_is_refused_by_the_merge(tiny_base: Path, tmp_path: Path) -> None:
    fulls = [_tied_full(tiny_base, tmp_path / "tied0", seed=0),
             _tied_full(tiny_base, tmp_path / "untied1", seed=1, head_offset=0.5)]
    with pytest.raises(MergeError, match=r"its lm_head.weight differs from model.embed_tokens.weight, which the "
                                         r"merge output's config \(.*tied0/config.json\) ties it to .*untied1") \
            as caught:
        merge_checkpoints(records(fulls, tiny_base), MergeConfig(), tmp_path / "out")
    assert "in the checkpoints' config.json" in caught.value.fix and not (tmp_path / "out").exists()
    base = _tied_base(tiny_base, tmp_path / "base")
    with pytest.raises(MergeError, match=r"base/config.json\) ties it to") as caught:
        merge_checkpoints(records(fulls, base), MergeConfig(), tmp_path / "out", base_model_dir=base)
    assert "merge against a base whose config.json unties them" in caught.value.fix


def test_inputs_that_tie_and_leave_out_their_head_are_refused_against_an_untied_base(tiny_base: Path,
                                                                                      tmp_path: Path) -> None:
    """The output would get the base's untied config and no head to go with it."""
    base = _tied_base(tiny_base, tmp_path / "tied")
    fulls = [save_tiny_full(base, tmp_path / f"full{i}", seed=i) for i in range(2)]
    assert "lm_head.weight" not in state(fulls[0])
    with pytest.raises(MergeError, match="tie lm_head.weight to model.embed_tokens.weight and leave it out, but the "
                                         "config the merge output gets .* unties it") as caught:
        merge_checkpoints(records(fulls, base), MergeConfig(), tmp_path / "out", base_model_dir=tiny_base)
    assert "ties them too" in caught.value.fix and not (tmp_path / "out").exists()


def test_swapping_a_full_finetune_into_a_tied_base_refuses_a_head_of_other_values(tiny_base: Path,
                                                                                    tmp_path: Path) -> None:
    equal = _tied_full(tiny_base, tmp_path / "equal", seed=0)
    other = _tied_full(tiny_base, tmp_path / "other", seed=1, head_offset=0.5)
    model = load_model(equal)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    load_full_weights_into(model, equal)
    with pytest.raises(CheckpointError, match="differs from model.embed_tokens.weight, which the base ties it to"):
        load_full_weights_into(model, other)


def test_the_tie_is_read_from_the_config_the_output_gets(tiny_base: Path, tmp_path: Path) -> None:
    """Inputs that tie their head (stored, equal), merged against an untied base whose config.json the output gets:
    the head is merged as the untied output needs it."""
    fulls = [_tied_full(tiny_base, tmp_path / f"tied{i}", seed=i) for i in range(2)]
    out = tmp_path / "out"
    merge_checkpoints(records(fulls, tiny_base), MergeConfig(method="dare_ties", density=0.5), out,
                      base_model_dir=tiny_base)
    assert "lm_head.weight" in state(out)
    model = load_model(out)
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight


def test_the_output_configs_tie_is_checked_though_the_inputs_config_does_not_build(tiny_base: Path,
                                                                                   tmp_path: Path) -> None:
    fulls = [_tied_full(tiny_base, tmp_path / f"odd{i}", seed=i, head_offset=0.5) for i in range(2)]
    for full in fulls:
        config = json.loads((full / "config.json").read_text())
        (full / "config.json").write_text(json.dumps({**config, "model_type": "nosuchmodel"}))
    base = _tied_base(tiny_base, tmp_path / "base")
    with pytest.raises(MergeError, match=r"differs from model.embed_tokens.weight, which the merge output's config "):
        merge_checkpoints(records(fulls, base), MergeConfig(), tmp_path / "out", base_model_dir=base)


def test_an_untied_copy_is_found_by_value_with_nan_equal_to_nan():
    from mashup.weight_names import untied_copy

    head = torch.tensor([[1.0, float("nan")], [0.5, 2.0]])
    tied = {"lm_head.weight": "embed.weight"}

    def pair(other: torch.Tensor) -> tuple[str, str] | None:
        return untied_copy(tied, {"lm_head.weight", "embed.weight"},
                           {"lm_head.weight": head, "embed.weight": other}.__getitem__)

    assert pair(head.clone()) is None  # the finite check names a NaN, not this one
    assert pair(head.to(torch.bfloat16)) is None
    assert pair(head + 1) == ("lm_head.weight", "embed.weight")
    assert pair(head[:1]) == ("lm_head.weight", "embed.weight")
    assert untied_copy(tied, {"embed.weight"}, lambda name: head) is None  # the head not stored: nothing to compare


def test_a_merge_whose_output_config_does_not_build_merges_as_before(tiny_base: Path, tmp_path: Path) -> None:
    """Inputs that tie and leave out their head against a base config no installed transformers builds: nothing is
    known of the output's ties, so nothing is refused for them (the tensors merge as they are)."""
    base = _tied_base(tiny_base, tmp_path / "base")
    fulls = [save_tiny_full(base, tmp_path / f"full{i}", seed=i) for i in range(2)]
    odd = Path(shutil.copytree(base, tmp_path / "odd"))
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "model_type": "nosuchmodel"}))
    merge_checkpoints(records(fulls, base), MergeConfig(), tmp_path / "out", base_model_dir=odd)
    assert "lm_head.weight" not in state(tmp_path / "out")
