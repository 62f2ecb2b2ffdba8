"""Multiple-choice accuracy and answer-token loss, and steps-to-parity between two curves."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mashup.batching import ScoredSequence, collate, last_token_logprobs, shared_prefix_logprobs
from mashup.data.prompts import EncodedRequest
from mashup.models import autocast


@dataclass
class EvalResult:
    """Accuracy (argmax over choices) and loss (mean answer-token CE, averaged over examples)."""

    accuracy: float
    loss: float
    n: int
    seconds: float
    precision: str = "fp32"

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


@dataclass(frozen=True)
class ScoreSettings:
    batch_size: int
    device: torch.device
    bf16: bool
    pad_id: int


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _score_single_token(model: nn.Module, requests: Sequence[EncodedRequest], s: ScoreSettings
                        ) -> tuple[list[float], list[int]]:
    """Letter answers: one forward pass per prompt scores every choice at the answer position."""
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt_ids))
    losses, preds = [0.0] * len(requests), [0] * len(requests)
    for chunk in _batches(order, s.batch_size):
        batch = collate([ScoredSequence(requests[i].prompt_ids, 1) for i in chunk], s.pad_id, s.device)
        with autocast(s.device, s.bf16):
            logprobs = last_token_logprobs(model, batch).cpu()
        for row, i in enumerate(chunk):
            choice_ids = [ids[0] for ids in requests[i].continuation_ids]
            losses[i] = -logprobs[row, choice_ids[requests[i].answer]].item()
            preds[i] = int(torch.argmax(logprobs[row, choice_ids]))
    return losses, preds


def _score_continuations(model: nn.Module, requests: Sequence[EncodedRequest], s: ScoreSettings
                         ) -> tuple[list[float], list[int]]:
    """Cloze answers: each choice is scored by its summed log-likelihood, normalised by length in characters."""
    # Continuations are padded to the longest in a batch, so batch similar lengths together.
    order = sorted(range(len(requests)), key=lambda i: (len(requests[i].continuation_ids),
                                                        max(map(len, requests[i].continuation_ids)),
                                                        len(requests[i].prompt_ids)))
    losses, preds = [0.0] * len(requests), [0] * len(requests)
    groups: dict[int, list[int]] = {}
    for i in order:  # one call scores prompts with equal numbers of choices
        groups.setdefault(len(requests[i].continuation_ids), []).append(i)
    for members in groups.values():
        for chunk in _batches(members, s.batch_size):
            with autocast(s.device, s.bf16):
                sums = shared_prefix_logprobs(model, [requests[i].prompt_ids for i in chunk],
                                              [requests[i].continuation_ids for i in chunk], s.pad_id, s.device)
            for row, i in enumerate(chunk):
                r = requests[i]
                losses[i] = -sums[row, r.answer].item() / len(r.continuation_ids[r.answer])
                normalised = sums[row].cpu() / torch.tensor(r.continuation_chars, dtype=torch.float32)
                preds[i] = int(torch.argmax(normalised))
    return losses, preds


@torch.no_grad()
def score_requests(model: nn.Module, requests: Sequence[EncodedRequest], settings: ScoreSettings
                   ) -> tuple[list[float], list[int]]:
    """Per-example answer loss and predicted choice index."""
    was_training = model.training
    model.eval()
    try:
        if all(r.single_token for r in requests):
            return _score_single_token(model, requests, settings)
        return _score_continuations(model, requests, settings)
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, requests: Sequence[EncodedRequest], settings: ScoreSettings) -> EvalResult:
    start = time.perf_counter()
    losses, preds = score_requests(model, requests, settings)
    correct = sum(p == r.answer for p, r in zip(preds, requests))
    return EvalResult(accuracy=correct / len(requests), loss=sum(losses) / len(losses), n=len(requests),
                      seconds=time.perf_counter() - start, precision="bf16" if settings.bf16 else "fp32")


def steps_to_parity(curve: Sequence[tuple[int, float]], target: float, fraction: float = 1.0) -> int | None:
    """First evaluated step whose accuracy reaches ``fraction`` x ``target``; None if never."""
    threshold = fraction * target
    return next((step for step, accuracy in curve if accuracy >= threshold - 1e-12), None)
