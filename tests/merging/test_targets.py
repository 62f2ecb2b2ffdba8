"""A merge of adapters whose adapter_config.json picks modules differently writes a config that picks exactly
the modules it wrote: PEFT loads every merged tensor, and scores through PEFT equal the engine's."""

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from mashup.config import MergeConfig
from mashup.merging import merge_checkpoints
from mashup.models import attach_adapter, load_model
from mashup.selection.engine import ScoringEngine
from tests.merging.helpers import records
from tests.selection.helpers import requests_for

def _adapter(base: Path, out: Path, seed: int, **settings) -> Path:
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **settings))
    model.save_pretrained(out)
    return out


@pytest.mark.fp32  # PEFT's fp32 forward is the oracle
@pytest.mark.parametrize("mode", ["concat", "delta"])
@pytest.mark.parametrize(("first", "second"), [
    ({"target_modules": ["q_proj"], "layers_to_transform": [0]}, {"target_modules": ["q_proj", "v_proj"]}),
    ({"target_modules": r"model\.layers\.\d+\.self_attn\.k_proj"}, {"target_modules": ["q_proj"]}),
])
def test_merged_targets_pick_the_merged_modules(tmp_path, tiny_base, mc_file, mode, first, second):
    inputs = [_adapter(tiny_base, tmp_path / "first", 1, **first), _adapter(tiny_base, tmp_path / "second", 2,
                                                                              **second)]
    out = tmp_path / "merged"
    merge_checkpoints(records(inputs), MergeConfig(lora_mode=mode), out)
    # before: layers_to_transform [0] was copied from the first input, or the regex put in a list; PEFT then
    # dropped the other modules' tensors, which attach_adapter refuses (model_checks.require_matching_keys)
    peft_model = attach_adapter(load_model(tiny_base), out, trainable=False)
    workspace, requests = requests_for(tiny_base, mc_file, 6, "letter")
    settings = workspace.settings(3)
    engine = ScoringEngine(tiny_base, requests, settings).score(records([out]))[0]
    assert engine.loss == pytest.approx(_peft_loss(peft_model, requests), rel=1e-5)


def _peft_loss(model, requests) -> float:
    losses = []
    with torch.no_grad():
        for request in requests:
            ids = torch.tensor([list(request.prompt_ids) + list(request.gold_ids)])
            log_probs = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            count = len(request.gold_ids)
            losses.append(float(-log_probs[-count:].gather(-1, ids[0, -count:, None]).mean()))
    return sum(losses) / len(losses)
