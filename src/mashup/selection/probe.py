"""One pass of the base model over the target sample, for the prefilters.

It records, for each LoRA-targeted ``nn.Linear``, the gradient of the answer loss with respect to its
weight (the first-order estimate's G) and a seeded subsample of its input rows (Arrow's hidden
states). The loss is the one selection ranks by: the mean over examples of the mean answer-token
cross-entropy, on the same prompt formulation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mashup.batching import answer_losses, collate
from mashup.data.prompts import EncodedRequest
from mashup.evaluation import ScoreSettings
from mashup.models import autocast, load_model
from mashup.score_batches import answer_batch_rows, answer_sequence


@dataclass
class Probe:
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)  # module -> dL/dW [out, in], on the device
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # module -> input rows [T, in], on the device
    tokens: int = 0  # forward tokens (the backward pass is not counted here)
    seconds: float = 0.0


def run_probe(base_dir: Path, requests: Sequence[EncodedRequest], settings: ScoreSettings, modules: Sequence[str], *,
              gradients: bool, inputs: bool, max_input_rows: int = 512, seed: int = 0,
              allow_pickle: bool = False) -> Probe:
    """Gradients and/or input rows of ``modules`` of the base on ``requests`` (answer tokens labelled)."""
    start = time.perf_counter()
    model = load_model(base_dir, allow_pickle=allow_pickle).to(settings.device).eval()
    model.requires_grad_(False)
    linears = {name: model.get_submodule(name) for name in modules}
    for linear in linears.values():
        linear.weight.requires_grad_(gradients)
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    keep: dict[str, torch.Tensor] = {}  # the rows kept from the current batch (same tokens for every module)
    hooks = [linear.register_forward_hook(_capture(name, captured, keep)) for name, linear in linears.items()
             ] if inputs else []
    pairs = [answer_sequence(r) for r in requests]
    generator = torch.Generator().manual_seed(seed)
    rows_per_example = max(1, max_input_rows // max(1, len(requests)))
    tokens = 0
    try:
        for rows in answer_batch_rows(requests, settings.batch_size):  # scoring's batches: little padding
            batch = collate([pairs[i] for i in rows], settings.pad_id, settings.device)
            keep["rows"] = _token_sample(batch["attention_mask"], rows_per_example, generator).to(settings.device)
            tokens += int(batch["attention_mask"].sum())
            with torch.set_grad_enabled(gradients), autocast(settings.device, settings.bf16):
                per_example = answer_losses(model, batch)
            if gradients:
                (per_example.sum() / len(pairs)).backward()
    finally:
        for hook in hooks:
            hook.remove()
    probe = Probe(tokens=tokens)
    # both stay on the device: the signals are computed there (prefilter.compute_signals), and copying them to
    # the host and back cost a transfer each, and the hooks a sync per module and batch
    if gradients:
        probe.gradients = {name: linear.weight.grad.detach().float() for name, linear in linears.items()}
    if inputs:
        probe.inputs = {name: torch.cat(rows) for name, rows in captured.items()}
    probe.seconds = time.perf_counter() - start
    return probe


def _token_sample(mask: torch.Tensor, per_example: int, generator: torch.Generator) -> torch.Tensor:
    """Flat indices of up to ``per_example`` real (unpadded) tokens of each row, drawn with the seed."""
    picked = []
    mask = mask.cpu()  # once, not a device sync per row
    width = mask.shape[1]
    for row in range(mask.shape[0]):
        real = torch.nonzero(mask[row], as_tuple=True)[0]
        order = torch.randperm(len(real), generator=generator)[:per_example]
        picked.append(row * width + real[order])
    return torch.cat(picked)


def _capture(name: str, captured: dict[str, list[torch.Tensor]], keep: dict[str, torch.Tensor]):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0].detach()
        captured[name].append(x.reshape(-1, x.shape[-1])[keep["rows"].to(x.device)].float())
    return hook
