"""Switch generation between the real SmolLM2-135M-Instruct and Gemma-3 270M (opt-in: -m integration)."""

from __future__ import annotations

import pytest
import torch

from mashup.switch.candidates import load_candidate
from mashup.switch.config import CandidateConfig, GenerationConfig
from mashup.switch.generation import Plan, fixed, switch_generate
from mashup.switch.rewards import NumberMatch
from mashup.switch.tasks import number_item


@pytest.mark.integration
def test_smollm2_and_gemma3_take_turns_on_one_response() -> None:
    cpu = torch.device("cpu")
    smol = load_candidate(CandidateConfig(model="smollm2-135m", role="aligned"), device=cpu)
    gemma = load_candidate(CandidateConfig(model="gemma3-270m", role="pretrained"), device=cpu)
    assert smol.chat and not gemma.chat  # the instruct model has a chat template, the pretrained one none
    item = number_item("What is 4 * 8?", "32")
    plan = Plan(GenerationConfig(segment_tokens=8, max_new_tokens=32), aligned=0)
    trace = switch_generate([smol, gemma], item.query, fixed(1), plan)
    assert trace.writers[0] == 0 and (trace.ended or trace.writers == [0, 1, 1, 0])
    assert trace.text.strip() and "\ufffd" not in trace.text
    assert all(s.tokens <= 8 for s in trace.segments)
    unaligned = Plan(plan.config.model_copy(update={"aligned_ends": False}), 0)
    alone = switch_generate([smol], item.query, fixed(0), unaligned)
    prompt = torch.tensor([smol.prompt_ids(item.query)])
    with torch.no_grad():  # one writer with its cache is plain greedy decoding through the chat template
        reference = smol.model.generate(prompt, max_new_tokens=32, do_sample=False, pad_token_id=smol.pad_id,
                                        eos_token_id=sorted(smol.eos_ids))[0, prompt.shape[1]:]
    assert alone.text == smol.tokenizer.decode(reference, skip_special_tokens=True)
    assert NumberMatch()(item, alone.text).reward in (0.0, 1.0)
