"""Relevance scoring: rank library checkpoints by their loss on a sample of the target's train split."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from peft import PeftModel
from torch import nn

from mashup.config import Metric
from mashup.data.prompts import EncodedRequest
from mashup.evaluation import ScoreSettings, evaluate
from mashup.library.records import CheckpointRecord
from mashup.models import attach_adapter, load_full_weights_into, load_model

logger = logging.getLogger(__name__)


@dataclass
class CheckpointScore:
    id: str
    task: str | None
    kind: str
    loss: float
    accuracy: float
    n: int
    seconds: float
    cached: bool = False  # read from the library's score cache rather than computed now

    def to_dict(self) -> dict:
        return asdict(self)


def rank(scores: Sequence[CheckpointScore], metric: Metric) -> list[CheckpointScore]:
    """Best first: ascending loss, or descending accuracy (ties broken by loss, then id)."""
    if metric == "accuracy":
        return sorted(scores, key=lambda s: (-s.accuracy, s.loss, s.id))
    return sorted(scores, key=lambda s: (s.loss, s.id))


def score_checkpoints(
    base_dir: Path,
    records: Sequence[CheckpointRecord],
    requests: Sequence[EncodedRequest],
    settings: ScoreSettings,
    *,
    allow_pickle: bool = False,
    on_scored: Callable[[CheckpointScore], None] | None = None,
) -> list[CheckpointScore]:
    """Score each checkpoint on the same requests; the base model is loaded once.

    LoRA adapters are swapped in place on one PeftModel; full fine-tunes have their
    weights loaded into the one model object.
    """
    model: nn.Module = load_model(base_dir, allow_pickle=allow_pickle).to(settings.device)
    scores = []
    previous: str | None = None
    for record in records:
        start = time.perf_counter()
        model, previous = _activate(model, record, previous, allow_pickle)
        result = evaluate(model, requests, settings)
        score = CheckpointScore(record.id, record.task, record.kind, result.loss, result.accuracy, result.n,
                                time.perf_counter() - start)
        logger.info("scored %s (%s): loss %.4f accuracy %.4f", record.id, record.task, score.loss, score.accuracy)
        scores.append(score)
        if on_scored:
            on_scored(score)
    return scores


def _activate(model: nn.Module, record: CheckpointRecord, previous: str | None,
              allow_pickle: bool) -> tuple[nn.Module, str | None]:
    if record.kind == "full":
        load_full_weights_into(model, Path(record.path), allow_pickle=allow_pickle)
        return model, None
    name = f"ckpt_{record.id}"
    if not isinstance(model, PeftModel):
        model = attach_adapter(model, Path(record.path), trainable=False, adapter_name=name)
    else:
        model.load_adapter(record.path, adapter_name=name, is_trainable=False)
        model.set_adapter(name)
        if previous is not None:
            model.delete_adapter(previous)
    model.eval()
    return model, name
