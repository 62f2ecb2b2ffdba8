"""Relevance scoring: rank library checkpoints by their loss on a sample of the target's train split."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from mashup.config import Metric
from mashup.errors import listed

logger = logging.getLogger(__name__)


@dataclass
class CheckpointScore:
    id: str
    task: str | None
    kind: str
    loss: float
    # None: scored for a loss ranking, which needs no accuracy, or a loss that is not finite (see ``finite``)
    accuracy: float | None
    n: int
    seconds: float
    cached: bool = False  # read from the library's score cache rather than computed now

    def __post_init__(self) -> None:
        self.accuracy = accuracy_if_finite(self.loss, self.accuracy)

    @property
    def finite(self) -> bool:
        """Whether the loss is finite: NaN or inf means NaN or inf weights, or a forward that overflowed."""
        return math.isfinite(self.loss)

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy_if_finite(loss: float | None, accuracy: float | None) -> float | None:
    """``accuracy``, or None where ``loss`` is not finite (None: a NaN as SQLite keeps it): predictions from NaN
    logits are no answers, an argmax over them picks choice 0."""
    return accuracy if loss is not None and math.isfinite(loss) else None


def rank(scores: Sequence[CheckpointScore], metric: Metric) -> list[CheckpointScore]:
    """Best first: ascending loss, or descending accuracy (ties broken by loss, then id). A loss that is not
    finite ranks last under either metric, its accuracy unknown: a NaN would scramble the sort and could come
    out first. Selection never selects such a checkpoint (``selectable``)."""
    if metric == "accuracy":
        assert all(s.accuracy is not None for s in scores if s.finite), "an accuracy ranking needs accuracies"
        return sorted(scores, key=lambda s: (not s.finite, -(s.accuracy or 0.0), _finite_or_last(s.loss), s.id))
    return sorted(scores, key=lambda s: (_finite_or_last(s.loss), s.id))


def selectable(ranking: Sequence[CheckpointScore]) -> list[CheckpointScore]:
    """The ranking without the scores whose loss is not finite (which ``rank`` puts last), in its order."""
    return [s for s in ranking if s.finite]


def warn_not_finite(scores: Sequence[CheckpointScore], paths: Mapping[str, str]) -> None:
    """One warning naming the scores whose loss is not finite (``paths``: the checkpoints' dirs by id), cached
    or not."""
    bad = [s for s in scores if not s.finite]
    if bad:
        logger.warning("%d checkpoint(s) scored a loss that is not finite (their forward is not finite: NaN or inf "
                       "weights, or an overflow), so they rank last and are never selected: %s; check their weights, "
                       "or `mashup library remove ID`", len(bad),
                       listed([f"{s.id} ({paths.get(s.id, '?')}, loss {s.loss})" for s in bad]))


def _finite_or_last(loss: float) -> float:
    return loss if math.isfinite(loss) else math.inf
