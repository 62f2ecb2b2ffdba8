"""Multiple-choice accuracy and answer-token loss, and steps-to-parity between two curves."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mashup.batching import (
    PrefixBatch,
    ScoredSequence,
    Stacking,
    collate,
    continuation_logprobs,
    last_token_logprobs,
    length_batches,
    prefix_batch,
    prefix_batch_logprobs,
    stacked_batches,
    stacked_forwards,
)
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

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


@dataclass(frozen=True)
class _LetterBatch:
    """Letter answers: one forward pass per prompt scores every choice at the answer position."""

    rows: list[int]
    inputs: dict[str, torch.Tensor]
    choice_ids: torch.Tensor  # [B, C] on the device (padded with 0 where a prompt has fewer choices)
    choice_mask: torch.Tensor  # [B, C]
    answers: torch.Tensor  # [B]

    def score(self, model: nn.Module, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
        # the choices gathered on the device: C values a row come back to the host, not the vocabulary's
        logprobs = last_token_logprobs(model, self.inputs, copies)
        chosen = logprobs.gather(-1, self.choice_ids.repeat(copies, 1)).cpu().view(copies, len(self.rows), -1)
        losses = -chosen.gather(-1, self.answers.view(1, -1, 1).expand(copies, -1, 1)).squeeze(-1)
        preds = chosen.masked_fill(~self.choice_mask, float("-inf")).argmax(dim=-1)
        return losses.double(), preds


@dataclass(frozen=True)
class _ClozeBatch:
    """Cloze answers: each choice scored by its summed log-likelihood, normalised by length in characters."""

    rows: list[int]
    prefix: PrefixBatch
    answers: torch.Tensor  # [B]
    answer_tokens: torch.Tensor  # [B], float64
    chars: torch.Tensor  # [B, C], float32

    def score(self, model: nn.Module, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
        sums = prefix_batch_logprobs(model, self.prefix, copies).cpu().view(copies, len(self.rows), -1)
        answer_sums = sums.gather(-1, self.answers.view(1, -1, 1).expand(copies, -1, 1)).squeeze(-1)
        losses = -answer_sums.double() / self.answer_tokens
        return losses, (sums / self.chars).argmax(dim=-1)


@dataclass(frozen=True)
class _AnswerBatch:
    """Cloze answers, loss only: each prompt with its gold continuation, one sequence, no other choice."""

    rows: list[int]
    inputs: dict[str, torch.Tensor]  # prompt + gold continuation, the continuation scored
    answer_tokens: torch.Tensor  # [B], float64

    def score(self, model: nn.Module, copies: int) -> tuple[torch.Tensor, None]:
        logprobs, _ = continuation_logprobs(model, self.inputs, copies)
        sums = logprobs.sum(dim=1).cpu().double().view(copies, len(self.rows))
        return -sums / self.answer_tokens, None


def _cut(order: Sequence[int], lengths: Sequence[int], batch_size: int, stacking: Stacking | None
         ) -> list[list[int]]:
    """Rows sorted by length, cut for one forward each (``length_batches``) or for stacked forwards."""
    if stacking is None:
        return length_batches(order, lengths, batch_size)
    return stacked_batches(order, lengths, batch_size, stacking)


def _letter_rows(requests: Sequence[EncodedRequest], batch_size: int, stacking: Stacking | None = None
                 ) -> list[list[int]]:
    lengths = [len(r.prompt_ids) for r in requests]
    return _cut(sorted(range(len(requests)), key=lambda i: lengths[i]), lengths, batch_size, stacking)


def _letter_batches(requests: Sequence[EncodedRequest], s: ScoreSettings, rows: Sequence[Sequence[int]]
                    ) -> list[_LetterBatch]:
    batches = []
    for chunk in rows:
        width = max(len(requests[i].continuation_ids) for i in chunk)
        choice_ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, i in enumerate(chunk):
            ids = [c[0] for c in requests[i].continuation_ids]
            choice_ids[row, :len(ids)], mask[row, :len(ids)] = torch.tensor(ids), True
        batches.append(_LetterBatch(chunk, collate([ScoredSequence(requests[i].prompt_ids, 1) for i in chunk],
                                                   s.pad_id, s.device), choice_ids.to(s.device), mask,
                                    torch.tensor([requests[i].answer for i in chunk])))
    return batches


def _cloze_rows(requests: Sequence[EncodedRequest], batch_size: int) -> list[list[int]]:
    # Continuations are padded to the longest in a batch, so batch similar lengths together.
    order = sorted(range(len(requests)), key=lambda i: (len(requests[i].continuation_ids),
                                                        max(map(len, requests[i].continuation_ids)),
                                                        len(requests[i].prompt_ids)))
    groups: dict[int, list[int]] = {}
    for i in order:  # one batch holds prompts with equal numbers of choices
        groups.setdefault(len(requests[i].continuation_ids), []).append(i)
    return [chunk for members in groups.values() for chunk in _batches(members, batch_size)]


def _cloze_batches(requests: Sequence[EncodedRequest], s: ScoreSettings, rows: Sequence[Sequence[int]]
                   ) -> list[_ClozeBatch]:
    batches = []
    for chunk in rows:
        rs = [requests[i] for i in chunk]
        prefix = prefix_batch([r.prompt_ids for r in rs], [r.continuation_ids for r in rs], s.pad_id, s.device)
        batches.append(_ClozeBatch(chunk, prefix, torch.tensor([r.answer for r in rs]),
                                   torch.tensor([len(r.continuation_ids[r.answer]) for r in rs], dtype=torch.float64),
                                   torch.tensor([r.continuation_chars for r in rs], dtype=torch.float32)))
    return batches


def answer_sequence(request: EncodedRequest) -> ScoredSequence:
    """The prompt followed by the correct continuation, the continuation scored (training's and a loss's input)."""
    return ScoredSequence(tuple(request.prompt_ids) + tuple(request.gold_ids), len(request.gold_ids))


def answer_batch_rows(requests: Sequence[EncodedRequest], batch_size: int, stacking: Stacking | None = None
                      ) -> list[list[int]]:
    """Which requests form each batch of prompt + gold answer sequences (loss scoring, the prefilter's probe),
    cut for stacked forwards with ``stacking``."""
    # Rows are padded to the batch's longest sequence, which costs more than the LM head over its longest
    # answer (a position through the whole model against one through the head), so sort by total length.
    lengths = [len(r.prompt_ids) + len(r.gold_ids) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: (lengths[i], len(requests[i].gold_ids)))
    return _cut(order, lengths, batch_size, stacking)


def _answer_batches(requests: Sequence[EncodedRequest], s: ScoreSettings,
                    rows: Sequence[Sequence[int]] | None = None) -> list[_AnswerBatch]:
    """Collated prompt + gold answer batches; ``rows``: which requests form each (default ``answer_batch_rows``)."""
    batches = []
    for chunk in answer_batch_rows(requests, s.batch_size) if rows is None else rows:
        rs = [requests[i] for i in chunk]
        inputs = collate([answer_sequence(r) for r in rs], s.pad_id, s.device)
        batches.append(_AnswerBatch(chunk, inputs, torch.tensor([len(r.gold_ids) for r in rs], dtype=torch.float64)))
    return batches


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
        single = _single_token(self.requests)
        self.with_accuracy = with_accuracy or single
        rows = plan_batch_rows(self.requests, settings.batch_size, with_accuracy, stacking)
        self.batches: list[_LetterBatch | _ClozeBatch | _AnswerBatch] = (
            _letter_batches(self.requests, settings, rows) if single
            else _cloze_batches(self.requests, settings, rows) if with_accuracy
            else _answer_batches(self.requests, settings, rows))

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


def _single_token(requests: Sequence[EncodedRequest]) -> bool:
    return all(r.single_token for r in requests)


def plan_batch_rows(requests: Sequence[EncodedRequest], batch_size: int, with_accuracy: bool = True,
                    stacking: Stacking | None = None) -> list[list[int]]:
    """Which requests form each batch of a ``ScoringPlan`` of them, found without collating any. Loss and
    letter batches are cut for stacked forwards with ``stacking``; cloze batches with every choice are
    grouped by their number of choices and keep their cuts."""
    if _single_token(requests):
        return _letter_rows(requests, batch_size, stacking)
    if with_accuracy:
        return _cloze_rows(requests, batch_size)
    return answer_batch_rows(requests, batch_size, stacking)


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
    start = time.perf_counter()
    losses, preds = score_requests(model, requests, settings)
    correct = sum(p == r.answer for p, r in zip(preds, requests))
    return EvalResult(accuracy=correct / len(requests), loss=sum(losses) / len(losses), n=len(requests),
                      seconds=time.perf_counter() - start, precision=settings.precision)


def steps_to_parity(curve: Sequence[tuple[int, float]], target: float, fraction: float = 1.0) -> int | None:
    """First evaluated step whose accuracy reaches ``fraction`` x ``target``; None if never."""
    threshold = fraction * target
    return next((step for step, accuracy in curve if accuracy >= threshold - 1e-12), None)
