"""Prefix scores: a checkpoint's answer-loss sum and correct count over the first n requests of the sample.

Successive halving scores survivors on nested prefixes of one seeded sample, so a longer prefix only
needs the requests past the shorter one; a score cached for a prefix (under that prefix's fingerprint)
is reused the same way. ``ScoreStore`` is the one place selection touches the library's score cache.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mashup.data.prompts import EncodedRequest
from mashup.library import CheckpointRecord
from mashup.library.score_cache import ScoreCache, fingerprint
from mashup.scoring import CheckpointScore, accuracy_if_finite
from mashup.selection.example_scores import ExampleScores, sample_tokens


@dataclass
class PrefixScore:
    loss_sum: float
    correct: int | None  # None: scored without accuracy
    n: int
    seconds: float = 0.0
    tokens: int = 0  # forward tokens spent on it in this call
    cached: bool = False
    losses: tuple[float, ...] | None = None  # per-example, for paired comparisons (None: not kept by an old cache)

    @property
    def loss(self) -> float:
        return self.loss_sum / self.n

    @property
    def accuracy(self) -> float | None:
        return None if self.correct is None else self.correct / self.n

    @classmethod
    def of(cls, scores: ExampleScores) -> PrefixScore:
        correct = None if scores.correct is None else sum(scores.correct)
        return cls(sum(scores.losses), correct, len(scores.losses), scores.seconds, scores.tokens,
                   losses=tuple(scores.losses))

    def extended(self, more: PrefixScore) -> PrefixScore:
        """This prefix followed by the requests scored in ``more``."""
        losses = self.losses + more.losses if self.losses is not None and more.losses is not None else None
        correct = self.correct + more.correct if self.correct is not None and more.correct is not None else None
        return PrefixScore(self.loss_sum + more.loss_sum, correct, self.n + more.n,
                           self.seconds + more.seconds, self.tokens + more.tokens, self.cached and more.cached, losses)

    def checkpoint_score(self, record: CheckpointRecord) -> CheckpointScore:
        return CheckpointScore(record.id, record.task, record.kind, self.loss, self.accuracy, self.n, self.seconds,
                               cached=self.cached)


class ScoreStore:
    """Read and write prefix means in the library's score cache (``None`` library: no cache)."""

    def __init__(self, library_dir: Path | None, base_dir: Path, sample_info: dict[str, Any] | None = None, *,
                 needs_accuracy: bool = True, bf16: bool = False) -> None:
        self.cache = ScoreCache(library_dir) if library_dir is not None else None
        self.base_dir = base_dir
        self.bf16 = bf16  # part of the key: scores of one precision never answer the other
        self.sample_info = sample_info or {}  # target, seed, formulation: labels the relevance matrix
        self.needs_accuracy = needs_accuracy  # then a score cached without accuracy is scored again

    def lookup(self, requests: Sequence[EncodedRequest], records: Iterable[CheckpointRecord]) -> dict[str, PrefixScore]:
        """Cached scores on exactly these requests, by record id."""
        records = list(records)
        if self.cache is None or not records:
            return {}
        found = self.cache.get(fingerprint(self.base_dir, requests, self.bf16), (r.sha256 for r in records))
        out = {}
        # a score cached with every choice answers a loss ranking at the loss-only share of its tokens
        share = 1.0 if self.needs_accuracy else _loss_only_share(requests)
        for record in records:
            if record.sha256 in found:
                loss, accuracy, n, seconds, losses, applies = found[record.sha256]
                loss = math.nan if loss is None else loss  # SQLite keeps a NaN as NULL; it ranks last (scoring.rank)
                kept = accuracy_if_finite(loss, accuracy)
                if kept is None and self.needs_accuracy and math.isfinite(loss):  # scored again
                    continue
                if applies is not None and applies != record.applies:  # same weights, another alpha (rank, ...)
                    continue
                # a cached score keeps the seconds it cost (0 for rows cached before that was recorded)
                out[record.id] = PrefixScore(loss * n, None if kept is None else round(kept * n), n,
                                             seconds=(seconds or 0.0) * (1.0 if accuracy is None else share),
                                             cached=True,
                                             losses=losses if losses is not None and len(losses) == n else None)
        return out

    def store(self, requests: Sequence[EncodedRequest], scores: Sequence[tuple[CheckpointRecord, PrefixScore]]) -> None:
        """Cache these scores on exactly ``requests``; a loss that is not finite is kept with no accuracy (its
        predictions come from NaN logits: no answers, ``CheckpointScore``)."""
        if self.cache is not None and scores:
            info = {**self.sample_info, "samples": len(requests)}
            self.cache.put(fingerprint(self.base_dir, requests, self.bf16),
                           [(r.sha256, s.loss, accuracy_if_finite(s.loss, s.accuracy), s.n, s.seconds,
                             s.losses, r.applies) for r, s in scores],
                           target=info.get("target"), sample=info)


def _loss_only_share(requests: Sequence[EncodedRequest]) -> float:
    """Forward tokens of a loss-only scoring of ``requests`` over those of scoring every choice."""
    return sample_tokens(requests, with_accuracy=False) / max(1, sample_tokens(requests, with_accuracy=True))
