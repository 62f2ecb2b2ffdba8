"""The switcher: an LM (plus a LoRA once trained) that reads the trace and names the next writer.

The prompt is the paper's: the query, each segment wrapped in ``<model i begins> ... <model i ends>``, then
"Which model should generate the next segment? Please respond with a number from 0 to n-1. The answer is
model ". The choice is read from the logits of the digit tokens in one forward pass: argmax, or top-p
sampling. The same prompt, with the label's digit as the only scored token, is a training example.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mashup.batching import ScoredSequence, collate, last_token_logprobs
from mashup.data.prompts import EncodedRequest
from mashup.errors import CheckpointError
from mashup.library.identity import same_base
from mashup.library.lora_config import ADAPTER_CONFIG
from mashup.config import Precision, load_config
from mashup.models import (autocast, default_device, load_model, load_tokenizer, merged_adapter, resolve_base_dir,
                           resolve_precision)
from mashup.switch.config import SWITCH_CONFIG, CandidateConfig, SwitchConfig, candidates_difference
from mashup.switch.candidates import with_full_ids
from mashup.switch.generation import Segment, segment_generator

logger = logging.getLogger(__name__)
QUESTION = (" Which model should generate the next segment? Please respond with a number from 0 to {last}."
            " The answer is model")


def switcher_text(query: str, segments: Sequence[Segment], n_candidates: int) -> str:
    """The paper's prompt up to (not including) the space before the digit."""
    trace = "".join(f" <model {s.writer} begins> {s.text} <model {s.writer} ends>" for s in segments)
    return query + trace + QUESTION.format(last=n_candidates - 1)


def encode_choice(tokenizer: PreTrainedTokenizerBase, text: str, n_candidates: int) -> tuple[list[int], list[int]]:
    """``(prompt_ids, digit_ids)``: ``text + " i"`` tokenizes as ``prompt_ids + [digit_ids[i]]`` for every i.

    Tokenizing the digit together with its space keeps the natural tokenization of "model 2" (one token
    for " 2" in byte-level BPEs, a separate space then "2" elsewhere).
    """
    options = [list(tokenizer(f"{text} {i}")["input_ids"]) for i in range(n_candidates)]
    prompt = options[0][:-1]
    if any(ids[:-1] != prompt for ids in options) or len({ids[-1] for ids in options}) != n_candidates:
        raise CheckpointError("the switcher's tokenizer does not end 'model 0..n' with one digit token", None,
                              "use a switcher model whose tokenizer has single-token digits")
    return prompt, [ids[-1] for ids in options]


def switcher_request(tokenizer: PreTrainedTokenizerBase, query: str, segments: Sequence[Segment],
                     n_candidates: int, label: int) -> EncodedRequest:
    """A training example: loss on the label's digit only (it is the one answer continuation)."""
    prompt, digits = encode_choice(tokenizer, switcher_text(query, segments, n_candidates), n_candidates)
    return EncodedRequest(tuple(prompt), tuple((d,) for d in digits), (1,) * n_candidates, label)


class Switcher:
    """Callable as a generation chooser; counts the tokens it runs for the cost accounting."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, n_candidates: int, *,
                 top_p: float | None = None, seed: int = 0, device: torch.device | None = None,
                 precision: Precision | None = None) -> None:
        self.model, self.tokenizer, self.n = model.eval(), tokenizer, n_candidates
        self.top_p, self.seed = top_p, seed
        self.device = device or next(model.parameters()).device
        self.bf16 = resolve_precision(precision, self.device) == "bf16"
        self.forwarded = 0

    @torch.no_grad()
    def probabilities(self, query: str, segments: Sequence[Segment]) -> torch.Tensor:
        """The distribution over candidates: softmax of the digit logits at the answer position."""
        prompt, digits = encode_choice(self.tokenizer, switcher_text(query, segments, self.n), self.n)
        batch = collate([ScoredSequence(tuple(prompt), 1)], int(self.tokenizer.pad_token_id), self.device)
        with autocast(self.device, self.bf16):
            logprobs = last_token_logprobs(self.model, batch)[0]
        self.forwarded += len(prompt)
        return logprobs[digits].float().softmax(-1).cpu()

    def __call__(self, query: str, segments: Sequence[Segment], step: int) -> int:
        probs = self.probabilities(query, segments)
        if self.top_p is None:
            return int(probs.argmax())
        ordered, order = probs.sort(descending=True)
        keep = (ordered.cumsum(0) - ordered) < self.top_p  # the smallest set whose mass reaches top_p
        kept = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
        return int(torch.multinomial(kept / kept.sum(), 1, generator=segment_generator(self.seed, step)))

    def cost(self) -> int:
        return self.forwarded


def load_switcher(model: str | Path, n_candidates: int, *, adapter: str | Path | None = None,
                  top_p: float | None = None, seed: int = 0, device: torch.device | None = None,
                  precision: Precision | None = None,
                  candidates: Sequence[CandidateConfig] | None = None) -> Switcher:
    """The switcher LM (a named base, local dir or Hub id), with its trained LoRA merged in when given.

    ``candidates`` (the configs whose indices the switcher names): refuse an adapter trained for others.
    """
    device = device or default_device()
    if adapter is not None:
        require_adapter_base(Path(adapter), str(model))
        if candidates is not None:
            require_adapter_candidates(Path(adapter), candidates)
    base_dir = resolve_base_dir(str(model))
    lm = load_model(base_dir)
    if adapter is not None:
        lm = merged_adapter(lm, Path(adapter))
    return Switcher(lm.to(device), load_tokenizer(base_dir), n_candidates, top_p=top_p, seed=seed, device=device,
                    precision=precision)


def require_adapter_base(adapter: Path, model: str) -> None:
    """Refuse a switcher adapter trained on another base: same shapes would load, and pick writers at random.

    The base is the one ``switch train`` records in adapter_config.json; compared by content identity where
    both resolve locally, else by spelling (as the library matches bases).
    """
    try:
        recorded = json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return  # attach_adapter says what is wrong with the dir
    if not isinstance(recorded, str) or not recorded:
        return
    if not same_base(recorded, model):
        raise CheckpointError(f"the switcher adapter was trained on base '{recorded}', not '{model}'", str(adapter),
                              "set switcher.model to the base it was trained on, or train a switcher on this one")


def require_adapter_candidates(adapter: Path, candidates: Sequence[CandidateConfig]) -> None:
    """Refuse a switcher adapter trained for other candidates (fewer, more or reordered): its digit ``i``
    names the i-th candidate it was trained with, so it would hand segments to the wrong writers.

    The candidates are those ``switch train`` records in the switch config beside ``adapter``; an adapter
    without one (trained elsewhere) is taken as it is.
    """
    recorded_path = adapter.parent / SWITCH_CONFIG
    if not recorded_path.is_file():
        logger.debug("no %s beside the switcher adapter %s: its candidates are not checked", SWITCH_CONFIG, adapter)
        return
    recorded = load_config(recorded_path, SwitchConfig)
    difference = candidates_difference(recorded.candidates, with_full_ids(candidates, recorded.library))
    if difference is not None:
        raise CheckpointError(f"the switcher adapter was trained for other candidates than the config's "
                              f"({difference})", str(adapter),
                              f"use the candidates of {recorded_path} in that order, or train a switcher for these")
