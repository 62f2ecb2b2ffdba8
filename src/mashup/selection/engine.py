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
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from mashup.batching import Stacking
from mashup.data.prompts import EncodedRequest
from mashup.evaluation import ScoreSettings, ScoringPlan
from mashup.library.base_shapes import require_model_modules
from mashup.library.records import CheckpointRecord
from mashup.io import sorted_shapes
from mashup.models import load_model
from mashup.selection.example_scores import ExampleScores, sample_tokens
from mashup.selection.read_ahead import AdapterReadAhead, default_read_ahead, device_keep_bytes
from mashup.selection.scoring_copies import ScoringCopies
from mashup.selection.slots import LoRASlots, SlotLayout
from mashup.selection.swapped_models import SwappedModels
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
# Each batch of a group's requests stacks as many of its adapters as fill a forward, so that a pass's short
# tail batch (50 of 256 CommonsenseQA questions) runs once for 20 adapters rather than once for every 4,
# and the requests are cut by length for that (``batching.stacked_batches``): a batch cut in two then
# costs few more forwards, each half stacking twice the adapters, and pads far less. False: every batch
# (cut by ``batching.length_batches``) runs once for a whole group (the engine before; benchmarks A/B
# against it). Not yet timed on a GPU: see ``benchmarks/scoring_cost_model.py`` for what a model fitted
# on an H200's timed forwards predicts.
STACK_EACH_BATCH = True
# A group is sized by its smallest batch, but a batch of a few rows (a long-question tail) would make it
# huge: below this many rows a batch counts as this many.
MIN_STACK_ROWS = 8
# A forward's fixed cost (kernel launches, small matmuls' overhead) in padded tokens, as a share of a full
# forward's rows x the sample's median length. On an H200 a SmolLM2 forward took max(40-43 ms, 23-44 ms +
# 1.65-2.03 ms per 1,000 padded tokens) (scoring_cost_model.py's fits on three machines): 11-27 thousand
# tokens' worth, against 1,024 rows x 19 tokens on CommonsenseQA. On this project's 2-core CPU a SmolLM2
# forward took 88 ms + 2.0 ms a token (rows x length from 8 to 2,048 tokens): 44 tokens, against 64 rows x
# 20. A larger model's forwards cost more per token for the same launches: its share is lower, and cuts
# by this one err towards fewer batches.
FORWARD_FIXED_SHARE = {"cuda": 1.0, "cpu": 0.035}


def default_adapters_per_forward(base_dir: Path, settings: ScoreSettings, batch_rows: Sequence[int] | None = None,
                                 forward_rows: int | None = None) -> int:
    """How many adapters a group holds (slots loaded at once): enough to fill one forward's rows (more on a
    GPU, fewer for a real model on a CPU) on the smallest of the batches they are scored on.

    ``batch_rows`` are the rows of each of those batches (``score_batches.plan_batch_rows``; default: one
    batch of ``settings.batch_size``). A first halving round of 8 examples fills a forward with many
    adapters, a 256-example pass with few; with ``STACK_EACH_BATCH`` each batch then stacks as many of the
    group as fill a forward (``ScoringPlan.run``'s ``stack_rows``), so a pass's short tail batch runs once
    for many adapters instead of once for each few. ``forward_rows``: ``group_rows``' answer, if known.
    """
    rows = group_rows(base_dir, settings) if forward_rows is None else forward_rows
    if not batch_rows:
        return max(1, rows // settings.batch_size)
    if not STACK_EACH_BATCH:
        return max(1, rows // min(settings.batch_size, sum(batch_rows)))
    return max(1, rows // max(min(batch_rows), min(MIN_STACK_ROWS, max(batch_rows))))


def default_stacking(base_dir: Path, settings: ScoreSettings, adapters: int | None = None,
                     forward_rows: int | None = None) -> Stacking | None:
    """How a group of ``adapters`` (default: as many as the smallest batch stacks) stacks each batch on the
    settings' device (None: without ``STACK_EACH_BATCH``); ``forward_rows`` as in ``default_adapters_per_forward``."""
    if not STACK_EACH_BATCH:
        return None
    rows = group_rows(base_dir, settings) if forward_rows is None else forward_rows
    most = max(1, rows // MIN_STACK_ROWS)
    share = FORWARD_FIXED_SHARE.get(settings.device.type, FORWARD_FIXED_SHARE["cuda"])
    return Stacking(rows, most if adapters is None else max(1, min(most, adapters)), share)


def group_rows(base_dir: Path, settings: ScoreSettings) -> int:
    """Rows one forward takes before grouping more adapters stops paying, on the settings' device."""
    if settings.device.type == "cuda":
        return CUDA_GROUP_ROWS
    return CPU_LARGE_MODEL_GROUP_ROWS if count_parameters(base_dir) > CPU_GROUPING_MAX_PARAMETERS else GROUP_ROWS


def keeps_scoring_copies(settings: ScoreSettings, read_ahead: bool | None) -> bool:
    """Whether an engine keeps bf16 copies of float32 adapters: when it reads ahead (None: by the device) into
    slots of bf16 (``settings.bf16``), the only case where a narrower copy holds the same values."""
    return settings.bf16 and (default_read_ahead(settings.device) if read_ahead is None else read_ahead)


class ScoringEngine:
    """Scores checkpoints of one base on fixed requests; build once, call ``score`` as often as needed.

    ``read_ahead`` reads adapter files on threads while the forwards run (``mashup.selection.read_ahead``;
    default: on CUDA only); ``prefetch`` queues the records of a later call. Reading ahead into bf16 slots, it
    keeps copies of float32 adapters in bf16 under ``copies_dir`` and reads those (``scoring_copies``).
    """

    def __init__(self, base_dir: Path, requests: Sequence[EncodedRequest], settings: ScoreSettings, *,
                 adapters_per_forward: int | None = None, allow_pickle: bool = False, with_accuracy: bool = True,
                 read_ahead: bool | None = None, copies_dir: Path | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.requests = list(requests)
        self.settings = settings
        self.with_accuracy = with_accuracy
        self.allow_pickle = allow_pickle
        self._requested_group = adapters_per_forward
        self._default_groups: dict[tuple[int, ...], int] = {}  # batch rows -> adapters per group
        self._stacking: Stacking | None = None if adapters_per_forward is not None else default_stacking(
            self.base_dir, settings)  # a group size asked for is what every forward holds
        self._plans: dict[tuple[tuple[int, ...], int | None], ScoringPlan] = {}  # by indices and adapters stacked
        self._layouts: dict[str, SlotLayout | None] = {}  # by record id
        self._layout: SlotLayout | None = None  # the slots' layout: the first plain adapter's
        self._layout_of = ""  # that adapter's dir
        self._slot_count = 0  # slots to build: the group size of the first call that saw that adapter
        self._slots: LoRASlots | None = None
        self._slot_model: nn.Module | None = None
        self._swapped = SwappedModels(self._load_base, allow_pickle)  # full fine-tunes and adapters not in slots
        self.read_ahead = default_read_ahead(settings.device) if read_ahead is None else read_ahead
        self._reader: AdapterReadAhead | None = None
        use_copies = copies_dir is not None and keeps_scoring_copies(settings, self.read_ahead)
        self._scoring_copies = ScoringCopies(copies_dir) if use_copies else None

    def _load_base(self) -> nn.Module:
        model = load_model(self.base_dir, allow_pickle=self.allow_pickle).to(self.settings.device)
        return model.eval().requires_grad_(False)

    def plan(self, indices: tuple[int, ...], adapters: int = 1) -> ScoringPlan:
        """Batches for a subset of the requests, collated once and kept; where each batch is stacked for a
        group, cut for ``adapters`` of them (``batching.stacked_batches``)."""
        stacking = self._stacking
        if stacking is not None:
            stacking = replace(stacking, adapters=max(1, min(stacking.adapters, adapters)))
        key = (indices, None if stacking is None else stacking.adapters)
        if key not in self._plans:
            self._plans[key] = ScoringPlan([self.requests[i] for i in indices], self.settings, self.with_accuracy,
                                           stacking)
        return self._plans[key]

    def tokens(self, indices: Sequence[int]) -> int:
        return sample_tokens([self.requests[i] for i in indices], self.with_accuracy)

    def score(self, records: Sequence[CheckpointRecord], indices: Sequence[int] | None = None,
              on_scored: Callable[[ExampleScores], None] | None = None) -> list[ExampleScores]:
        """Per-example scores of each record on ``indices`` (default: all requests), in record order.

        LoRA adapters run first (on the untouched base), then full fine-tunes, swapped into one model.
        """
        key = tuple(range(len(self.requests))) if indices is None else tuple(indices)
        grouped, group, plan = self._grouped(records, key)
        tokens = self.tokens(key)
        results: dict[str, ExampleScores] = {}

        def emit(record: CheckpointRecord, losses: torch.Tensor, preds: torch.Tensor | None, seconds: float) -> None:
            correct = None if preds is None else [p == r.answer for p, r in zip(preds.tolist(), plan.requests)]
            scores = ExampleScores(record.id, key, losses.tolist(), correct, seconds, tokens)
            results[record.id] = scores
            # a loss that is not finite is warned of where the ranking is made (``scoring.warn_not_finite``), cached
            # or not, and in the driver's process, not a Ray worker's
            logger.info("scored %s (%s): loss %.4f accuracy %s", record.id, record.task, scores.loss, scores.accuracy)
            if on_scored:
                on_scored(scores)

        self._queue_reads(grouped)
        if grouped:
            self._build_slots()
        for start in range(0, len(grouped), group):
            self._score_group(grouped[start:start + group], plan, emit)
        for record in records:
            if record.id not in results and record.kind == "lora":
                self._score_alone(record, plan, emit, self._swapped.peft)
        for record in records:
            if record.id not in results:
                self._score_alone(record, plan, emit, self._swapped.full)
        return [results[r.id] for r in records]

    def prefetch(self, records: Sequence[CheckpointRecord], indices: Sequence[int] | None = None) -> None:
        """Start reading the adapters that a later ``score(records, indices)`` will copy into slots, after
        those already queued (a no-op unless reading ahead)."""
        if self.read_ahead:
            key = tuple(range(len(self.requests))) if indices is None else tuple(indices)
            self._queue_reads(self._grouped(records, key)[0])

    def _queue_reads(self, grouped: Sequence[CheckpointRecord]) -> None:
        if self._reader is not None:
            self._reader.request(Path(r.path) for r in grouped)

    def _grouped(self, records: Sequence[CheckpointRecord], key: tuple[int, ...]
                 ) -> tuple[list[CheckpointRecord], int, ScoringPlan]:
        """The records the slots hold (the first plain adapter seen picks their layout), how many are loaded
        at once, and the plan of ``key`` they are scored with."""
        for record in records:
            if record.id not in self._layouts:  # read once: a record is scored and prefetched in several calls
                self._layouts[record.id] = SlotLayout.of(record)
        first = None
        if self._layout is None:
            first = next((r for r in records if self._layouts[r.id] is not None), None)
            if first is None:
                return [], 1, self.plan(key)
        layout = self._layout or self._layouts[first.id]
        grouped = [r for r in records if self._layouts[r.id] == layout]
        plan = self.plan(key, len(grouped))
        group = self._group_size(plan)
        if first is not None:
            self._choose_layout(first, group)
        return grouped, min(group, self._slot_count), plan  # slots are built once, for the first call's group size

    def _group_size(self, plan: ScoringPlan) -> int:
        if self._requested_group is not None:
            return self._requested_group
        rows = tuple(len(batch.rows) for batch in plan.batches)
        if rows not in self._default_groups:  # the stacking's rows were read from the base's headers once
            self._default_groups[rows] = default_adapters_per_forward(
                self.base_dir, self.settings, rows, forward_rows=self._stacking.rows if self._stacking else None)
        return self._default_groups[rows]

    def _choose_layout(self, record: CheckpointRecord, group: int) -> None:
        """Fix the slots' layout and count; the base loads later (``_build_slots``), so that reads queued
        before then run while it loads: the reader checks files against the catalog's shapes."""
        self._layout, self._slot_count, self._layout_of = self._layouts[record.id], group, record.path
        if self.read_ahead:
            self._reader = AdapterReadAhead(sorted_shapes(record.shapes), self.settings.device,
                                            allow_pickle=self.allow_pickle, copies=self._scoring_copies)

    def _build_slots(self) -> None:
        """Load the base and wrap it with the slots, once."""
        if self._slots is not None:
            return
        assert self._layout is not None
        self._slot_model = self._load_base()
        # an adapter saved under other module names (another transformers version's, or the inner model's)
        require_model_modules(self._layout.modules, self._slot_model, self._layout_of)
        # under bf16 autocast the slots and the layers they wrap hold bf16: autocast would cast them each forward
        dtype = torch.bfloat16 if self.settings.bf16 else None
        self._slots = LoRASlots(self._slot_model, self._layout, self._slot_count, dtype)
        if self._reader is None:
            return
        if self._reader.factors != self._slots.factors:
            # the adapter's shapes do not fit the base: no block could go into a slot, so read for the slots
            self._reader.close()
            self._reader = AdapterReadAhead(self._slots.factors, self.settings.device, allow_pickle=self.allow_pickle,
                                            copies=self._scoring_copies)
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
            slots = self._slots
            stack_rows = None if self._stacking is None else self._stacking.rows
            # run makes each forward's slots active (select) before it: the whole group, or each window of it
            losses, preds = plan.run(self._slot_model, copies=len(loaded), stack_rows=stack_rows,
                                     select=lambda first, count: slots.activate(count, first))
            slots.activate(0)
            seconds = (time.perf_counter() - start) / len(loaded)
            for g, record in enumerate(loaded):
                emit(record, losses[g], None if preds is None else preds[g], seconds)

    def _score_alone(self, record: CheckpointRecord, plan: ScoringPlan, emit: Callable,
                     activate: Callable[[CheckpointRecord], nn.Module]) -> None:
        start = time.perf_counter()
        model = activate(record)
        losses, preds = plan.run(model)
        emit(record, losses[0], None if preds is None else preds[0], time.perf_counter() - start)
