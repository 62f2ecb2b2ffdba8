"""The scoring engine: one base model, requests batched once, adapters copied into slots.

Numbers equal ``evaluate`` on a PEFT model with the adapter attached (up to float rounding): the same
batches, the same shared-prefix cloze scoring, the same per-example loss. What changes is the cost
around the forward passes: no tokenising, collating or module building per candidate, and on hardware
where small forwards leave the matmul units idle, several adapters share one forward. Built with
``with_accuracy=False`` it scores cloze requests by the gold continuation alone (the same losses, no
accuracy), which is all a loss ranking needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mashup.data.prompts import EncodedRequest
from mashup.evaluation import ScoreSettings, ScoringPlan
from mashup.library.records import CheckpointRecord
from mashup.io import sorted_shapes
from mashup.models import attach_adapter, load_full_weights_into, load_model
from mashup.selection.read_ahead import AdapterReadAhead, default_read_ahead, device_keep_bytes
from mashup.selection.slots import LoRASlots, SlotLayout
from mashup.workspace import count_parameters

logger = logging.getLogger(__name__)

# Rows (adapters x examples) one forward may hold before grouping stops paying: past this the matmuls
# are large enough that stacking more adapters only adds activation memory.
GROUP_ROWS = 256
# On a GPU a small model's forward is bound by kernel launches, not by its matmuls: on an H100 one
# SmolLM2 adapter over 256 questions (about 8k tokens) took 0.1 s whatever the tokens, so there more
# adapters share a forward.
CUDA_GROUP_ROWS = 1024
# Above this many parameters a CPU forward is nearly compute-bound: past about 64 rows (4 adapters on the
# default 16-question batches) more rows only add activation memory. On SmolLM2-135M, 2 AVX2 cores, 4
# adapters per forward took 0.85-0.97x the time of one at a time (ARC-Easy 64 and SocialIQA 256
# questions), 8 per forward 0.96-0.97x.
CPU_GROUPING_MAX_PARAMETERS = 50_000_000
CPU_LARGE_MODEL_GROUP_ROWS = 64


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


def default_adapters_per_forward(base_dir: Path, settings: ScoreSettings, examples: int | None = None) -> int:
    """How many adapters share a forward: enough rows to fill the matmuls (more on a GPU, fewer for a real
    model on a CPU).

    ``examples`` is how many requests each adapter is scored on: a first halving round of 8 examples
    fills a forward's rows with many adapters, where a 256-example pass fills them with one.
    """
    rows = min(settings.batch_size, examples) if examples else settings.batch_size
    return max(1, group_rows(base_dir, settings) // rows)


def group_rows(base_dir: Path, settings: ScoreSettings) -> int:
    """Rows one forward takes before grouping more adapters stops paying, on the settings' device."""
    if settings.device.type == "cuda":
        return CUDA_GROUP_ROWS
    return CPU_LARGE_MODEL_GROUP_ROWS if count_parameters(base_dir) > CPU_GROUPING_MAX_PARAMETERS else GROUP_ROWS


class ScoringEngine:
    """Scores checkpoints of one base on fixed requests; build once, call ``score`` as often as needed.

    ``read_ahead`` reads adapter files on threads while the forwards run (``mashup.selection.read_ahead``;
    default: on CUDA only); ``prefetch`` queues the records of a later call.
    """

    def __init__(self, base_dir: Path, requests: Sequence[EncodedRequest], settings: ScoreSettings, *,
                 adapters_per_forward: int | None = None, allow_pickle: bool = False, with_accuracy: bool = True,
                 read_ahead: bool | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.requests = list(requests)
        self.settings = settings
        self.with_accuracy = with_accuracy
        self.allow_pickle = allow_pickle
        self._requested_group = adapters_per_forward
        self._default_groups: dict[int, int] = {}  # examples per adapter -> adapters per forward
        self._plans: dict[tuple[int, ...], ScoringPlan] = {}
        self._layouts: dict[str, SlotLayout | None] = {}  # by record id
        self._layout: SlotLayout | None = None  # the slots' layout: the first plain adapter's
        self._slot_count = 0  # slots to build: the group size of the first call that saw that adapter
        self._slots: LoRASlots | None = None
        self._slot_model: nn.Module | None = None
        self._full_model: nn.Module | None = None
        self._peft_model: nn.Module | None = None
        self.read_ahead = default_read_ahead(settings.device) if read_ahead is None else read_ahead
        self._reader: AdapterReadAhead | None = None

    def _load_base(self) -> nn.Module:
        model = load_model(self.base_dir, allow_pickle=self.allow_pickle).to(self.settings.device)
        return model.eval().requires_grad_(False)

    def plan(self, indices: tuple[int, ...]) -> ScoringPlan:
        """Batches for a subset of the requests, collated once and kept."""
        if indices not in self._plans:
            self._plans[indices] = ScoringPlan([self.requests[i] for i in indices], self.settings, self.with_accuracy)
        return self._plans[indices]

    def tokens(self, indices: Sequence[int]) -> int:
        return sample_tokens([self.requests[i] for i in indices], self.with_accuracy)

    def score(self, records: Sequence[CheckpointRecord], indices: Sequence[int] | None = None,
              on_scored: Callable[[ExampleScores], None] | None = None) -> list[ExampleScores]:
        """Per-example scores of each record on ``indices`` (default: all requests), in record order.

        LoRA adapters run first (on the untouched base), then full fine-tunes, swapped into one model.
        """
        key = tuple(range(len(self.requests))) if indices is None else tuple(indices)
        plan = self.plan(key)
        tokens = self.tokens(key)
        results: dict[str, ExampleScores] = {}

        def emit(record: CheckpointRecord, losses: torch.Tensor, preds: torch.Tensor | None, seconds: float) -> None:
            correct = None if preds is None else [p == r.answer for p, r in zip(preds.tolist(), plan.requests)]
            scores = ExampleScores(record.id, key, losses.tolist(), correct, seconds, tokens)
            results[record.id] = scores
            logger.info("scored %s (%s): loss %.4f accuracy %s", record.id, record.task, scores.loss, scores.accuracy)
            if on_scored:
                on_scored(scores)

        grouped, group = self._grouped(records, len(key))
        self._queue_reads(grouped)
        if grouped:
            self._build_slots()
        for start in range(0, len(grouped), group):
            self._score_group(grouped[start:start + group], plan, emit)
        for record in records:
            if record.id not in results and record.kind == "lora":
                self._score_alone(record, plan, emit, self._peft_for)
        for record in records:
            if record.id not in results:
                self._score_alone(record, plan, emit, self._full_for)
        return [results[r.id] for r in records]

    def prefetch(self, records: Sequence[CheckpointRecord], indices: Sequence[int] | None = None) -> None:
        """Start reading the adapters that a later ``score(records, indices)`` will copy into slots, after
        those already queued (a no-op unless reading ahead)."""
        if self.read_ahead:
            self._queue_reads(self._grouped(records, len(self.requests) if indices is None else len(indices))[0])

    def _queue_reads(self, grouped: Sequence[CheckpointRecord]) -> None:
        if self._reader is not None:
            self._reader.request(Path(r.path) for r in grouped)

    def _grouped(self, records: Sequence[CheckpointRecord], examples: int) -> tuple[list[CheckpointRecord], int]:
        """The records the slots hold (the first plain adapter seen picks their layout), and how many share
        a forward."""
        for record in records:
            if record.id not in self._layouts:  # read once: a record is scored and prefetched in several calls
                self._layouts[record.id] = SlotLayout.of(record)
        group = self._group_size(examples)
        if self._layout is None:
            first = next((r for r in records if self._layouts[r.id] is not None), None)
            if first is None:
                return [], group
            self._choose_layout(first, group)
        grouped = [r for r in records if self._layouts[r.id] == self._layout]
        return grouped, min(group, self._slot_count)  # slots are built once, for the first call's group size

    def _group_size(self, examples: int) -> int:
        if self._requested_group is not None:
            return self._requested_group
        if examples not in self._default_groups:  # the default reads the base's weight headers: once per size
            self._default_groups[examples] = default_adapters_per_forward(self.base_dir, self.settings, examples)
        return self._default_groups[examples]

    def _choose_layout(self, record: CheckpointRecord, group: int) -> None:
        """Fix the slots' layout and count; the base loads later (``_build_slots``), so that reads queued
        before then run while it loads: the reader checks files against the catalog's shapes."""
        self._layout, self._slot_count = self._layouts[record.id], group
        if self.read_ahead:
            self._reader = AdapterReadAhead(sorted_shapes(record.shapes), self.settings.device,
                                            allow_pickle=self.allow_pickle)

    def _build_slots(self) -> None:
        """Load the base and wrap it with the slots, once."""
        if self._slots is not None:
            return
        assert self._layout is not None
        self._slot_model = self._load_base()
        # under bf16 autocast the slots and the layers they wrap hold bf16: autocast would cast them each forward
        dtype = torch.bfloat16 if self.settings.bf16 else None
        self._slots = LoRASlots(self._slot_model, self._layout, self._slot_count, dtype)
        if self._reader is None:
            return
        if self._reader.factors != self._slots.factors:
            # the adapter's shapes do not fit the base: no block could go into a slot, so read for the slots
            self._reader.close()
            self._reader = AdapterReadAhead(self._slots.factors, self.settings.device, allow_pickle=self.allow_pickle)
        # sized once the base and the slots take their memory, so the blocks kept leave the forwards theirs
        self._reader.keep_bytes = device_keep_bytes(self.settings.device)

    def _score_group(self, group: Sequence[CheckpointRecord], plan: ScoringPlan, emit: Callable) -> None:
        assert self._slots is not None and self._slot_model is not None
        start = time.perf_counter()
        loaded = []
        for record in group:
            path = Path(record.path)
            block = self._reader.take(path) if self._reader is not None else None
            if self._slots.load_adapter(len(loaded), path, record.lora_scale, self.allow_pickle, block):
                if self._reader is not None:
                    self._reader.keep(path, self._slots.storage[len(loaded)])
                loaded.append(record)
        if loaded:
            self._slots.activate(len(loaded))
            losses, preds = plan.run(self._slot_model, copies=len(loaded))
            self._slots.activate(0)
            seconds = (time.perf_counter() - start) / len(loaded)
            for g, record in enumerate(loaded):
                emit(record, losses[g], None if preds is None else preds[g], seconds)

    def _score_alone(self, record: CheckpointRecord, plan: ScoringPlan, emit: Callable,
                     activate: Callable[[CheckpointRecord], nn.Module]) -> None:
        start = time.perf_counter()
        model = activate(record)
        losses, preds = plan.run(model)
        emit(record, losses[0], None if preds is None else preds[0], time.perf_counter() - start)

    def _full_for(self, record: CheckpointRecord) -> nn.Module:
        """A full fine-tune's weights swapped into one reused model object."""
        if self._full_model is None:
            self._full_model = self._load_base()
        load_full_weights_into(self._full_model, Path(record.path), allow_pickle=self.allow_pickle)
        return self._full_model

    def _peft_for(self, record: CheckpointRecord) -> nn.Module:
        """Adapters the slots cannot hold (other layouts, DoRA-like features) go through PEFT's own modules."""
        from peft import PeftModel

        name = f"ckpt_{record.id}"
        if self._peft_model is None:
            self._peft_model = attach_adapter(self._load_base(), Path(record.path), trainable=False, adapter_name=name)
        elif self._peft_model.active_adapter != name:  # the same adapter again (a later halving round) stays
            model = self._peft_model
            previous = model.active_adapter
            model.load_adapter(record.path, adapter_name=name, is_trainable=False)
            model.set_adapter(name)
            model.delete_adapter(previous)
        assert isinstance(self._peft_model, PeftModel)
        return self._peft_model.eval()

