"""Candidates (the models that take turns) and their per-response token streams with a KV cache each.

A stream holds one candidate's view of a response: its prompt (chat template applied when it has one)
followed by the response so far, in its own tokens. On its turn it tokenizes only the text the other
candidates added since its last turn, prefills just those tokens into its cache and generates on. A
candidate writing consecutive segments therefore generates exactly as it would alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from mashup.errors import CheckpointError, MashupError
from mashup.library import Library
from mashup.config import Precision
from mashup.model_checks import require_registered_dir
from mashup.models import (autocast, default_device, load_model, load_tokenizer, merged_adapter, resolve_base_dir,
                           resolve_precision)
from mashup.switch.config import CandidateConfig, GenerationConfig, resolved_candidate

logger = logging.getLogger(__name__)
DECODE_CONTEXT = 8  # tokens decoded before a segment so that its leading space / merged bytes come out right


@dataclass
class Candidate:
    """A loaded model that writes segments. ``base_dir`` groups candidates that share a base."""

    name: str
    role: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    chat: bool
    base_dir: Path
    device: torch.device
    bf16: bool = False
    eos_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def prompt_ids(self, query: str) -> list[int]:
        """The query as a user turn (chat template) or as plain text."""
        if self.chat:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": query}], tokenize=False,
                                                      add_generation_prompt=True)
            return self.encode(str(text))
        return list(self.tokenizer(query)["input_ids"])

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def vocabulary_key(self) -> tuple:
        """Equal for candidates whose token ids mean the same strings (logit averaging needs that)."""
        return (self.model.config.vocab_size, tuple(sorted(self.tokenizer.get_vocab().items())))


def load_candidate(config: CandidateConfig, library: Library | None = None,
                   device: torch.device | None = None, precision: Precision | None = None) -> Candidate:
    """Load a named/local/Hub base (with an optional adapter) or a library checkpoint, LoRA merged in."""
    device = device or default_device()
    adapter = Path(config.adapter) if config.adapter else None
    if config.checkpoint is not None:
        library = library or Library()
        record = library.get(config.checkpoint)
        require_registered_dir(record, library.directory)
        base_dir = resolve_base_dir(record.base_model)
        weights_dir = Path(record.path) if record.kind == "full" else base_dir
        adapter = Path(record.path) if record.kind == "lora" else None
    else:
        base_dir = weights_dir = resolve_base_dir(str(config.model))
    model = load_model(weights_dir)  # a NaN weight would write garbage text, not fail
    if adapter is not None:
        model = merged_adapter(model, adapter)
    tokenizer = load_tokenizer(weights_dir if (weights_dir / "tokenizer_config.json").is_file() else base_dir)
    chat = config.chat_template == "on" or (config.chat_template == "auto" and bool(tokenizer.chat_template))
    if config.chat_template == "on" and not tokenizer.chat_template:
        raise CheckpointError("chat_template: on, but the tokenizer has no chat template", str(base_dir),
                              "use chat_template: auto or off")
    return Candidate(config.label(), config.role, model.eval().to(device), tokenizer, chat, base_dir, device,
                     resolve_precision(precision, device) == "bf16", _eos_ids(model, tokenizer))


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids = {tokenizer.eos_token_id}
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
    return frozenset(int(i) for i in ids if i is not None)


class Sampler:
    """Greedy, or temperature + top-p with transformers' warpers and a caller-owned generator."""

    def __init__(self, config: GenerationConfig) -> None:
        self.do_sample = config.do_sample
        self.warpers = [TemperatureLogitsWarper(config.temperature)] if config.temperature != 1.0 else []
        if config.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(config.top_p))

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None) -> int:
        if not self.do_sample:
            return int(logits.argmax())
        scores = logits.unsqueeze(0)
        for warp in self.warpers:
            scores = warp(None, scores)  # type: ignore[arg-type]  # neither warper reads input_ids
        return int(torch.multinomial(scores.softmax(-1).cpu(), 1, generator=generator))


class Stream:
    """One candidate's token ids for one response, and the KV cache of every id but the last ones fed."""

    def __init__(self, candidate: Candidate, query: str) -> None:
        self.candidate = candidate
        self.ids = candidate.prompt_ids(query)
        self.prompt_length = len(self.ids)
        self.cache = None
        self.n_cached = 0
        self.last_logits: torch.Tensor | None = None
        self.seen_chars = 0  # how much of the response text is in ``ids``
        self.forwarded = 0  # tokens run through the model: the cost of this stream

    def catch_up(self, response: str) -> None:
        """Append, in this candidate's tokens, the response text written since its last turn."""
        delta = response[self.seen_chars:]
        if delta:
            self.ids.extend(self.candidate.encode(delta))
        self.seen_chars = len(response)

    @torch.no_grad()
    def next_logits(self) -> torch.Tensor:
        """Next-token logits after ``ids``; only the ids not yet in the cache are run."""
        new = self.ids[self.n_cached:]
        if not new and self.last_logits is not None:
            return self.last_logits
        c = self.candidate
        with autocast(c.device, c.bf16):
            out = c.model(input_ids=torch.tensor([new], device=c.device), cache=self.cache,
                          use_cache=True, logits_to_keep=1)
        self.cache, self.n_cached = out.cache, len(self.ids)
        self.forwarded += len(new)
        self.last_logits = out.logits[0, -1].float()
        return self.last_logits

    def write(self, n_tokens: int, sampler: Sampler, generator: torch.Generator | None) -> tuple[str, int, bool]:
        """Generate up to ``n_tokens``: ``(text, tokens, hit_eos)``. The caller appends the text."""
        start = len(self.ids)
        hit_eos = False
        for _ in range(n_tokens):
            token = sampler(self.next_logits(), generator)
            if token in self.candidate.eos_ids:
                hit_eos = True
                break
            self.ids.append(token)
        text = self.decode_from(start)
        self.seen_chars += len(text)
        return text, len(self.ids) - start, hit_eos

    def decode_from(self, start: int) -> str:
        """The text of ``ids[start:]``, decoded with a few tokens of context so spaces and bytes join right."""
        tokenizer = self.candidate.tokenizer
        context = max(self.prompt_length, start - DECODE_CONTEXT)
        head = tokenizer.decode(self.ids[context:start], skip_special_tokens=True)
        full = tokenizer.decode(self.ids[context:], skip_special_tokens=True)
        if full.startswith(head):
            return full[len(head):]
        return tokenizer.decode(self.ids[start:], skip_special_tokens=True)


def load_candidates(configs: list[CandidateConfig], library: str | None = None,
                    device: torch.device | None = None, precision: Precision | None = None) -> list[Candidate]:
    """All candidates, in config order (their indices are the switcher's digits)."""
    catalog = Library.existing(library) if any(c.checkpoint for c in configs) else None  # a typo: said as such
    candidates = []
    for config in configs:
        candidates.append(load_candidate(config, catalog, device, precision))
        logger.info("loaded candidate %s (%s, chat template: %s)", config.label(), config.role,
                    candidates[-1].chat)
    return candidates


def recorded_candidates(configs: list[CandidateConfig], library: str | None = None, *,
                        required: bool = True) -> list[CandidateConfig]:
    """The candidates as a collect or a training records them (:func:`resolved_candidate`), with each checkpoint
    id (or prefix) given as the full id it resolves to, so that a later library's new id sharing the prefix is not
    taken for it. Without ``required`` a library that cannot resolve them (gone, or moved) leaves the ids as
    given."""
    return with_full_ids([resolved_candidate(c) for c in configs], library, required=required)


def with_full_ids(configs: Sequence[CandidateConfig], library: str | None = None, *,
                  required: bool = False) -> list[CandidateConfig]:
    """``configs`` with each checkpoint id prefix given as the full id ``library`` resolves it to (a config naming
    ``c8c3`` is the one a record names ``c8c3678c9135``); without ``required`` ids the library cannot resolve (it is
    gone, or moved) stay as given."""
    if not any(c.checkpoint for c in configs):
        return list(configs)
    try:
        catalog = Library.existing(library)
        return [c.model_copy(update={"checkpoint": catalog.get(c.checkpoint).id}) if c.checkpoint else c
                for c in configs]
    except MashupError:
        if required:
            raise
        logger.debug("checkpoint ids as given: library %s does not resolve them", library)
        return list(configs)
