"""Multiple-choice accuracy and answer-token loss, and steps-to-parity between two curves. The batches scored, and
which requests form each: mashup.score_batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mashup.batching import Stacking, stacked_forwards
from mashup.data.prompts import EncodedRequest
from mashup.models import autocast
from mashup.score_batches import (
    ScoreBatch,
    answer_batches,
    cloze_batches,
    letter_batches,
    plan_batch_rows,
    single_token,
)


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
    """How requests are scored: rows a batch, on which device, under bf16 autocast or not, padded with which id."""

    batch_size: int
    device: torch.device
    bf16: bool
    pad_id: int

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"


class ScoringPlan:
    """Requests ordered, batched and collated once; ``run`` scores them with a model, as often as needed.

    Letter and loss-only batches hold similar lengths, at most ``batch_size`` rows and about
    ``batch_size`` median-length rows' worth of padded tokens (``mashup.batching.length_batches``), or,
    given a ``stacking`` (each batch stacked for a group of adapters), cut for that
    (``mashup.batching.stacked_batches``).

    With ``copies`` = G the model is run on every batch stacked G times (copy-major rows), which is
    how G LoRA slots are scored in one forward (see mashup.selection.slots). ``with_accuracy=False``
    scores cloze requests by their gold continuation alone: the same loss without the other choices'
    forward passes, and no prediction (letter requests predict anyway: it costs nothing there).
    """

    def __init__(self, requests: Sequence[EncodedRequest], settings: ScoreSettings, with_accuracy: bool = True,
                 stacking: Stacking | None = None) -> None:
        self.requests = list(requests)
        self.settings = settings
        single = single_token(self.requests)
        self.with_accuracy = with_accuracy or single
        rows = plan_batch_rows(self.requests, settings.batch_size, with_accuracy, stacking)
        self.batches: list[ScoreBatch] = (
            letter_batches(self.requests, settings, rows) if single
            else cloze_batches(self.requests, settings, rows) if with_accuracy
            else answer_batches(self.requests, settings, rows))

    def forward_rows(self, copies: int = 1, stack_rows: int | None = None) -> list[int]:
        """Rows of each forward ``run`` makes with these arguments, in order."""
        return [len(batch.rows) * count for batch in self.batches
                for _, count in stack_windows(copies, len(batch.rows), stack_rows)]

    @torch.no_grad()
    def run(self, model: nn.Module, copies: int = 1, *, stack_rows: int | None = None,
            select: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-example answer loss ``[copies, n]`` (float64) and predicted choice ``[copies, n]`` (None
        without accuracy).

        By default each batch runs once with its rows stacked ``copies`` times. With ``stack_rows`` a batch
        stacks only as many copies as fit that many rows, in windows (``stack_windows``), each announced
        first with ``select(first copy, count)`` (which LoRA slots the forward is to use).
        """
        if stack_rows is not None and select is None:
            raise ValueError("stack_rows needs select: each window of copies must be made the model's")
        losses = torch.zeros((copies, len(self.requests)), dtype=torch.float64)
        preds = torch.zeros((copies, len(self.requests)), dtype=torch.long) if self.with_accuracy else None
        # switching modes sets every module (5 ms for eval and back on SmolLM2 with LoRA slots, 2-core CPU,
        # against 0.5 ms to look), and selection runs a model already wholly in eval mode hundreds of times
        was_training = model.training
        switch = any(module.training for module in model.modules())
        if switch:
            model.eval()
        try:
            for batch in self.batches:
                for first, count in stack_windows(copies, len(batch.rows), stack_rows):
                    if select is not None:
                        select(first, count)
                    with autocast(self.settings.device, self.settings.bf16):
                        batch_losses, batch_preds = batch.score(model, count)
                    losses[first:first + count, batch.rows] = batch_losses
                    if preds is not None:
                        preds[first:first + count, batch.rows] = batch_preds
        finally:
            if switch:
                model.train(was_training)
        return losses, preds


def stack_windows(copies: int, rows: int, stack_rows: int | None) -> list[tuple[int, int]]:
    """(first copy, count) of each forward over a batch of ``rows`` rows scored for ``copies`` copies: all in
    one, or as many as fit ``stack_rows`` rows per forward, the windows as even as their number allows."""
    if stack_rows is None:
        return [(0, copies)]
    forwards = stacked_forwards(copies, rows, stack_rows)
    size, longer = divmod(copies, forwards)
    windows, first = [], 0
    for index in range(forwards):
        count = size + (index < longer)
        windows.append((first, count))
        first += count
    return windows


def score_requests(model: nn.Module, requests: Sequence[EncodedRequest], settings: ScoreSettings
                   ) -> tuple[list[float], list[int]]:
    """Per-example answer loss and predicted choice index."""
    losses, preds = ScoringPlan(requests, settings).run(model)
    assert preds is not None
    return losses[0].tolist(), preds[0].tolist()


def evaluate(model: nn.Module, requests: Sequence[EncodedRequest], settings: ScoreSettings) -> EvalResult:
    """Accuracy and mean answer loss of ``model`` on ``requests``, timed."""
    start = time.perf_counter()
    losses, preds = score_requests(model, requests, settings)
    correct = sum(p == r.answer for p, r in zip(preds, requests))
    return EvalResult(accuracy=correct / len(requests), loss=sum(losses) / len(losses), n=len(requests),
                      seconds=time.perf_counter() - start, precision=settings.precision)


def steps_to_parity(curve: Sequence[tuple[int, float]], target: float, fraction: float = 1.0) -> int | None:
    """First evaluated step whose accuracy reaches ``fraction`` x ``target``; None if never."""
    threshold = fraction * target
    return next((step for step, accuracy in curve if accuracy >= threshold - 1e-12), None)
