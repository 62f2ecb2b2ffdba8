"""The batches a ``ScoringPlan`` scores (mashup.evaluation): which requests form each, collated once, and how each
kind of batch scores its rows in one forward: letter answers, cloze answers with every choice, or the gold answer
alone (loss only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
)
from mashup.data.prompts import EncodedRequest

if TYPE_CHECKING:
    from mashup.evaluation import ScoreSettings


def chunks(items: list, size: int) -> list[list]:
    """``items`` in runs of ``size`` (the last one shorter)."""
    return [items[i:i + size] for i in range(0, len(items), size)]


NO_PREDICTION = -1  # a row whose choices scored NaN (NaN or inf weights, an overflow): no choice is its answer


def predictions(choice_scores: torch.Tensor) -> torch.Tensor:
    """Each row's best choice (highest score, last dim), or ``NO_PREDICTION`` where a score is NaN: torch's argmax
    takes NaN for the largest and picks the first NaN, which would count as correct wherever that is the answer
    (the first choice, where every score is NaN)."""
    return choice_scores.argmax(dim=-1).masked_fill(choice_scores.isnan().any(dim=-1), NO_PREDICTION)


@dataclass(frozen=True)
class LetterBatch:
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
        return losses.double(), predictions(chosen.masked_fill(~self.choice_mask, float("-inf")))


@dataclass(frozen=True)
class ClozeBatch:
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
        return losses, predictions(sums / self.chars)


@dataclass(frozen=True)
class AnswerBatch:
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


def letter_rows(requests: Sequence[EncodedRequest], batch_size: int, stacking: Stacking | None = None
                ) -> list[list[int]]:
    """Which letter requests form each batch: by prompt length, cut for one forward each or stacked ones."""
    lengths = [len(r.prompt_ids) for r in requests]
    return _cut(sorted(range(len(requests)), key=lambda i: lengths[i]), lengths, batch_size, stacking)


def letter_batches(requests: Sequence[EncodedRequest], s: ScoreSettings, rows: Sequence[Sequence[int]]
                   ) -> list[LetterBatch]:
    """The letter batches of ``rows``, collated on the device, with each prompt's choice tokens."""
    batches = []
    for chunk in rows:
        width = max(len(requests[i].continuation_ids) for i in chunk)
        choice_ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, i in enumerate(chunk):
            ids = [c[0] for c in requests[i].continuation_ids]
            choice_ids[row, :len(ids)], mask[row, :len(ids)] = torch.tensor(ids), True
        batches.append(LetterBatch(chunk, collate([ScoredSequence(requests[i].prompt_ids, 1) for i in chunk],
                                                  s.pad_id, s.device), choice_ids.to(s.device), mask,
                                   torch.tensor([requests[i].answer for i in chunk])))
    return batches


def cloze_rows(requests: Sequence[EncodedRequest], batch_size: int) -> list[list[int]]:
    """Which cloze requests form each batch: equal numbers of choices, of similar lengths."""
    # Continuations are padded to the longest in a batch, so batch similar lengths together.
    order = sorted(range(len(requests)), key=lambda i: (len(requests[i].continuation_ids),
                                                        max(map(len, requests[i].continuation_ids)),
                                                        len(requests[i].prompt_ids)))
    groups: dict[int, list[int]] = {}
    for i in order:  # one batch holds prompts with equal numbers of choices
        groups.setdefault(len(requests[i].continuation_ids), []).append(i)
    return [chunk for members in groups.values() for chunk in chunks(members, batch_size)]


def cloze_batches(requests: Sequence[EncodedRequest], s: ScoreSettings, rows: Sequence[Sequence[int]]
                  ) -> list[ClozeBatch]:
    """The cloze batches of ``rows``: each prompt once, every choice continuing it (``prefix_batch``)."""
    batches = []
    for chunk in rows:
        rs = [requests[i] for i in chunk]
        prefix = prefix_batch([r.prompt_ids for r in rs], [r.continuation_ids for r in rs], s.pad_id, s.device)
        batches.append(ClozeBatch(chunk, prefix, torch.tensor([r.answer for r in rs]),
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


def answer_batches(requests: Sequence[EncodedRequest], s: ScoreSettings,
                   rows: Sequence[Sequence[int]] | None = None) -> list[AnswerBatch]:
    """Collated prompt + gold answer batches; ``rows``: which requests form each (default ``answer_batch_rows``)."""
    batches = []
    for chunk in answer_batch_rows(requests, s.batch_size) if rows is None else rows:
        rs = [requests[i] for i in chunk]
        inputs = collate([answer_sequence(r) for r in rs], s.pad_id, s.device)
        batches.append(AnswerBatch(chunk, inputs, torch.tensor([len(r.gold_ids) for r in rs], dtype=torch.float64)))
    return batches


def single_token(requests: Sequence[EncodedRequest]) -> bool:
    """Whether every request has one-token choices (letter answers)."""
    return all(r.single_token for r in requests)


def plan_batch_rows(requests: Sequence[EncodedRequest], batch_size: int, with_accuracy: bool = True,
                    stacking: Stacking | None = None) -> list[list[int]]:
    """Which requests form each batch of a ``ScoringPlan`` of them, found without collating any. Loss and
    letter batches are cut for stacked forwards with ``stacking``; cloze batches with every choice are
    grouped by their number of choices and keep their cuts."""
    if single_token(requests):
        return letter_rows(requests, batch_size, stacking)
    if with_accuracy:
        return cloze_rows(requests, batch_size)
    return answer_batch_rows(requests, batch_size, stacking)


ScoreBatch = LetterBatch | ClozeBatch | AnswerBatch
