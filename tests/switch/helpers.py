"""Tiny candidates for the switch tests: two share the tests' tokenizer, one has its own (with a chat template)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mashup.switch.candidates import Candidate, load_candidate
from mashup.switch.config import CandidateConfig, GenerationConfig, SwitchConfig
from tests.tiny import CORPUS, build_model

CHAT_TEMPLATE = ("{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def build_other_tokenizer() -> PreTrainedTokenizerFast:
    """A different byte-level BPE (smaller vocabulary, other specials) with a chat template."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|end|>", "<|user|>", "<|assistant|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([line.lower() for line in CORPUS], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|end|>", pad_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_other_base(out_dir: Path, seed: int = 5) -> Path:
    tokenizer = build_other_tokenizer()
    model = build_model(len(tokenizer), seed)
    model.config.eos_token_id = model.config.pad_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def candidate(path: Path, role: str = "candidate", name: str | None = None, adapter: Path | None = None,
              chat: str = "auto", precision: str | None = None) -> Candidate:
    config = CandidateConfig(model=str(path), adapter=str(adapter) if adapter else None, role=role, name=name,
                             chat_template=chat)  # type: ignore[arg-type]
    return load_candidate(config, device=torch.device("cpu"), precision=precision)  # type: ignore[arg-type]


def generation(**kwargs: object) -> GenerationConfig:
    return GenerationConfig(**{"segment_tokens": 4, "max_new_tokens": 16, **kwargs})  # type: ignore[arg-type]

def two_candidates(tiny_base: Path, other_base: Path) -> SwitchConfig:
    """A switch config of two tiny candidates, the first aligned, with short segments."""
    return SwitchConfig(candidates=[CandidateConfig(model=str(tiny_base), role="aligned", name="a"),
                                    CandidateConfig(model=str(other_base), name="b")],
                        generation=generation(segment_tokens=3, max_new_tokens=12))


def cut_back(out: Path) -> str:
    """The collect in ``out`` cut back to its first instance, as a crash would leave it."""
    (out / "summary.json").unlink()
    first = (out / "rollouts.jsonl").read_text().splitlines()[0] + "\n"
    (out / "rollouts.jsonl").write_text(first)
    return first
