"""A checkpoint's per-example scores, and the forward tokens that scoring requests costs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mashup.data.prompts import EncodedRequest


@dataclass
class ExampleScores:
    """One checkpoint's per-example answer losses and correctness on the requests scored."""

    id: str
    indices: tuple[int, ...]
    losses: list[float]
    correct: list[bool] | None  # None: scored without accuracy
    seconds: float
    tokens: int  # forward tokens: real (unpadded) prompt and continuation tokens

    @property
    def loss(self) -> float:
        return sum(self.losses) / len(self.losses)

    @property
    def accuracy(self) -> float | None:
        return None if self.correct is None else sum(self.correct) / len(self.correct)


def forward_tokens(request: EncodedRequest, with_accuracy: bool = True) -> int:
    """Tokens a request sends through the model: the prompt, plus every continuation when cloze-scored
    (only the gold one without accuracy)."""
    if request.single_token:
        return len(request.prompt_ids)
    if not with_accuracy:
        return len(request.prompt_ids) + len(request.gold_ids)
    return len(request.prompt_ids) + sum(len(c) for c in request.continuation_ids)


def sample_tokens(requests: Sequence[EncodedRequest], with_accuracy: bool = True) -> int:
    """Forward tokens of scoring every request once (see ``forward_tokens``)."""
    return sum(forward_tokens(r, with_accuracy) for r in requests)
