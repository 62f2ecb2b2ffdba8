"""Shared helpers for the merging tests."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from mashup.library.records import CheckpointRecord, inspect_checkpoint
from tests.tiny import CORPUS


def records(paths: list[Path], base: Path | None = None) -> list[CheckpointRecord]:
    out = []
    for i, path in enumerate(paths):
        record = inspect_checkpoint(path, base=str(base) if base else None)
        record.id = f"ckpt{i}"
        out.append(record)
    return out


def calibration_batches(base: Path, n: int = 4) -> list[dict[str, torch.Tensor]]:
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoded = tokenizer(CORPUS[:n], padding=True, return_tensors="pt")
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    return [{"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}]


def sample_inputs(base: Path) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(base)
    return dict(tokenizer(["Question: Which is a colour?", "The cat sat"], padding=True, return_tensors="pt"))


@torch.no_grad()
def logits_of(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    return model(**inputs).logits


@torch.no_grad()
def adapter_logits(base: Path, adapter: Path, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    return logits_of(model, inputs)


@torch.no_grad()
def logits_with_deltas(base: Path, deltas: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the base with ΔW added by hand to the named weights."""
    model = AutoModelForCausalLM.from_pretrained(base)
    params = dict(model.named_parameters())
    for name, delta in deltas.items():
        params[name].add_(delta.to(params[name].dtype))
    return logits_of(model, inputs)
