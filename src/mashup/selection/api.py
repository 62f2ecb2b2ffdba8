"""``select_checkpoints``: the one call ``mashup.verbs.select`` makes to rank candidates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import torch

from mashup.config import SelectConfig
from mashup.data.prompts import EncodedRequest
from mashup.evaluation import ScoreSettings
from mashup.errors import LibraryError, listed
from mashup.executors import Executor, make_executor
from mashup.library import CheckpointRecord
from mashup.score_batches import plan_batch_rows
from mashup.scoring import CheckpointScore, selectable, warn_not_finite
from mashup.selection.driver import ProgressFn, Selection, SelectionContext, SelectionStats
from mashup.selection.engine import default_adapters_per_forward, default_stacking, group_rows, keeps_scoring_copies
from mashup.selection.example_scores import sample_tokens
from mashup.selection.scores import ScoreStore
from mashup.selection.scoring_copies import SCORING_COPIES_DIR, prune_library_copies
from mashup.selection.selectors import get_selector
from mashup.selection.units import EngineFactory
from mashup.workspace import Workspace


def select_checkpoints(workspace: Workspace, records: Sequence[CheckpointRecord], requests: Sequence[EncodedRequest],
                       config: SelectConfig, library_dir: Path | None, *, allow_pickle: bool = False,
                       progress: ProgressFn | None = None, executor: Executor | None = None,
                       sample_info: dict | None = None) -> Selection:
    """Rank ``records`` on ``requests`` (the seeded sample) with the configured selector and executor.

    Scores are read from and written to the library's score cache unless ``config.cache`` is off;
    ``sample_info`` (target, seed, formulation) labels them there. Reading ahead into bf16 slots, bf16 copies of
    float32 adapters are kept under the library dir unless ``config.scoring_copies`` is off.
    An executor passed in is left open (the caller owns it); one made here is closed here.
    """
    selector = get_selector(config.selector)
    settings = workspace.settings(config.batch_size)
    copies_dir = Path(library_dir) / SCORING_COPIES_DIR if library_dir and config.scoring_copies else None
    own = executor is None
    executor = executor or make_executor(config.executor, address=config.ray_address)
    local = executor.name == "local"
    # a loss ranking needs no accuracy, and without it a cloze request costs its gold continuation only
    with_accuracy = config.metric == "accuracy" or config.with_accuracy
    # remote workers pick their own device, but score in the driver's precision: a Ray run ranks like a local one
    factory = EngineFactory(workspace.base_dir, tuple(requests), config.batch_size, settings.pad_id,
                            device=str(settings.device) if local else None, bf16=settings.bf16,
                            adapters_per_forward=config.adapters_per_forward, allow_pickle=allow_pickle,
                            with_accuracy=with_accuracy, read_ahead=config.read_ahead,
                            copies_dir=copies_dir)
    stats = SelectionStats(selector=config.selector, executor=executor.name, candidates=len(records),
                           samples=len(requests),
                           exhaustive_tokens=len(records) * sample_tokens(requests, with_accuracy))
    # a unit is what one worker call scores: one forward's adapters on the workers' device (GPU actors
    # behind a CPU driver still get GPU-sized units)
    worker_settings = settings if executor.worker_device is None else replace(
        settings, device=torch.device(executor.worker_device))
    unit_size = UnitSizer(workspace.base_dir, worker_settings, config, with_accuracy)
    store = ScoreStore(library_dir if config.cache else None, workspace.base_dir, sample_info,
                       needs_accuracy=with_accuracy, bf16=settings.bf16)
    retried_before = executor.retried
    context = SelectionContext(workspace.base_dir, requests, settings, config, executor, factory, store, stats,
                               unit_size=unit_size, library_dir=library_dir,
                               allow_pickle=allow_pickle, progress=progress)
    try:
        if copies_dir is not None and keeps_scoring_copies(worker_settings, config.read_ahead):
            prune_library_copies(copies_dir, Path(library_dir), [r.path for r in records])  # type: ignore[arg-type]
        ranking = selector(context, records)
    finally:
        stats.retried_units = executor.retried - retried_before
        if own:
            executor.close()
    warn_not_finite(ranking, {r.id: r.path for r in records})
    return Selection(ranking, stats)


def select_top(ranking: Sequence[CheckpointScore], k: int, library_dir: Path | None) -> list[str]:
    """The ids of the ``k`` best of ``ranking`` whose loss is finite; a ``LibraryError`` where fewer are, as
    where fewer than k checkpoints are usable: a merge of fewer than asked for, or of NaN weights, is no answer."""
    usable = selectable(ranking)
    if len(usable) >= k:
        return [s.id for s in usable[:k]]
    bad = [s.id for s in ranking if not s.finite]
    if not bad:  # no selector ranks fewer than k of k or more candidates; were one to, it is no selection
        raise LibraryError(f"k={k} but the selector ranked only {len(ranking)} checkpoint(s)",
                           str(library_dir) if library_dir else None,
                           "lower k (--k), or use the exhaustive selector (--selector exhaustive)")
    raise LibraryError(f"k={k} but only {len(usable)} of {len(ranking)} ranked checkpoint(s) scored a finite loss "
                       f"(not finite: {listed(bad)})", str(library_dir) if library_dir else None,
                       "lower k (--k), or check those checkpoints' weights (see the warnings) and register others")


@dataclass(frozen=True)
class UnitSizer:
    """Adapters per unit (one forward's group) for requests scored among ``candidates``: the configured number,
    else what fills the workers' forwards (``default_adapters_per_forward`` over the stacked batches)."""

    base_dir: Path
    settings: ScoreSettings
    config: SelectConfig
    with_accuracy: bool

    def __call__(self, unit_requests: Sequence[EncodedRequest], candidates: int) -> int:
        if self.config.adapters_per_forward:
            return self.config.adapters_per_forward
        stacking = default_stacking(self.base_dir, self.settings, candidates, forward_rows=self._group_rows)
        batches = plan_batch_rows(unit_requests, self.config.batch_size, self.with_accuracy, stacking)
        return default_adapters_per_forward(self.base_dir, self.settings, [len(batch) for batch in batches],
                                            forward_rows=self._group_rows)

    @cached_property
    def _group_rows(self) -> int:
        """``group_rows`` once per selection (a sizer lives for one, on one base): on a CPU it reads the base's
        safetensors headers, which every halving round would otherwise read again."""
        return group_rows(self.base_dir, self.settings)
