"""Per-checkpoint statistics for Fisher and RegMean merges, computed on the caller's calibration batches."""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mashup.errors import MergeError
from mashup.library.records import CheckpointRecord
from mashup.merging.fisher import estimate_fisher
from mashup.merging.lora import base_weight_name
from mashup.merging.plan import MergePlan
from mashup.merging.regmean import conv1d_weights, estimate_gram, unseen_features
from mashup.models import load_model, merged_adapter
from mashup.weight_names import saved_names

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)
Tensors = dict[str, torch.Tensor]


def _lora_weight_names(plan: MergePlan) -> set[str]:
    """Base weights adapted by any of the plan's adapters (one that lacks a module contributes ΔW = 0 there)."""
    return {base_weight_name(module) for module in plan.modules}


def load_checkpoint_model(record: CheckpointRecord, base_model_dir: Path) -> PreTrainedModel:
    """The checkpoint as a plain model: a full fine-tune, or the base with the adapter merged in."""
    if record.kind == "full":
        return load_model(Path(record.path))
    # the base is not registered, so nothing checked its values: NaN statistics would only show in the output
    return merged_adapter(load_model(base_model_dir), Path(record.path))


def _statistics_for(model: PreTrainedModel, plan: MergePlan, record: CheckpointRecord,
                    batches: Sequence[dict[str, torch.Tensor]]) -> Tensors:
    limit = plan.config.fisher_samples
    wanted = _lora_weight_names(plan) if record.kind == "lora" else None
    if plan.method.statistic == "gram":
        grams = estimate_gram(model, batches, limit)
        return grams if wanted is None else {n: g for n, g in grams.items() if n in wanted}
    aliases = list(model.named_parameters(remove_duplicate=False))  # a tied head is wanted under either name
    for _, param in aliases:
        param.requires_grad_(False)
    for name, param in aliases:
        if wanted is None or name in wanted:
            param.requires_grad_(True)
    return estimate_fisher(model, batches, limit)


def compute_statistics(plan: MergePlan, base_model_dir: Path | None,
                       batches: Sequence[dict[str, torch.Tensor]] | None) -> list[Tensors] | None:
    """One statistics dict per checkpoint (keyed by base-model weight name, in each weight's stored layout), or None
    if the method needs none; sets ``plan.conv1d_weights``, the weights stored (in, out)."""
    if plan.method.statistic is None:
        return None
    if not batches:
        raise MergeError(f"{plan.method.name} needs calibration batches", None,
                         "pass calibration_batches (dicts of input_ids, attention_mask, labels)")
    if base_model_dir is None:
        raise MergeError(f"{plan.method.name} needs the base model to load checkpoints", None, "pass base_model_dir")
    statistics: list[Tensors] = []
    by_design: set[str] = set()
    for record in plan.records:
        logger.info("estimating %s statistics for %s", plan.method.statistic, record.id or record.path)
        model = load_checkpoint_model(record, base_model_dir)
        plan.conv1d_weights = conv1d_weights(model)
        statistics.append(_statistics_for(model, plan, record, batches))
        if record.kind == "full":  # a full merge reads weights by their files' names, which may not be the model's
            saved = saved_names(model, statistics[-1].keys() | plan.conv1d_weights)
            statistics[-1] = {saved[name]: stat for name, stat in statistics[-1].items()}
            plan.conv1d_weights = {saved[name] for name in plan.conv1d_weights}
            if plan.method.statistic == "gram" and not by_design:
                by_design = _averaged_by_design(model)
        del model
        gc.collect()
    _warn_of_fallbacks(plan, statistics, by_design)
    return statistics


def _averaged_by_design(model: PreTrainedModel) -> set[str]:
    """The weights RegMean averages by design, by their files' names: the embeddings, the output head (a Linear
    head has a Gram all the same) and buffers."""
    head = model.get_output_embeddings()
    names = {f"{name}.weight" for name, module in model.named_modules()
             if isinstance(module, torch.nn.Embedding) or head is not None and module is head}
    names |= {name for name, _ in model.named_buffers()}
    return set(saved_names(model, names & model.state_dict().keys()).values())


def _warn_of_fallbacks(plan: MergePlan, statistics: Sequence[Tensors], by_design: set[str]) -> None:
    """Warn, once per merge each, of the weights (ΔW in a LoRA merge) the method averages for want of statistics,
    and of those RegMean solves on only some input features (``_warn_partly_seen``). Averaged: a full merge's 2-D
    weights RegMean has no Gram for (no Linear or Conv1D layer takes them: transformers 5 fuses MoE experts into
    3-D parameters and keeps routers as bare ones, while the files store 2-D weights per expert), and the weights
    whose statistics are all zero (a layer the calibration batches never ran: a vision tower on text)."""
    gram = plan.method.statistic == "gram"
    names = _weighed_names(plan, statistics, by_design)
    averaged = [name for name in names if not _informed(plan, name, statistics)]
    if averaged:
        subject = "adapted weights" if plan.kind == "lora" else "linear weights" if gram else "tensors"
        lacking = "have no RegMean statistics" if gram else "have zero Fisher information in every checkpoint"
        why = ("no Linear or Conv1D layer that ran on the calibration batches takes it" if gram else
               "no gradient reached it on the calibration batches, as in a layer they never ran")
        plan.warn(f"{len(averaged)} {subject} {lacking} and {'their ΔW ' if plan.kind == 'lora' else ''}are "
                  f"averaged (e.g. {averaged[0]}: {why})")
    if gram:
        _warn_partly_seen(plan, statistics, [name for name in names if name not in averaged])


def _weighed_names(plan: MergePlan, statistics: Sequence[Tensors], by_design: set[str]) -> list[str]:
    """The weights the method would weigh by their statistics, sorted: a LoRA merge's adapted weights (one without
    statistics is refused by the merge), a full merge's 2-D weights not averaged by design (RegMean; those without
    a Gram too) or tensors with Fisher information (full.py counts those without)."""
    if plan.kind == "lora":
        return sorted(_lora_weight_names(plan) & statistics[0].keys())
    shapes = plan.records[0].shapes  # merge_full takes the first checkpoint's names as all's
    if plan.method.statistic == "gram":
        return sorted(name for name, shape in shapes.items() if len(shape) == 2 and name not in by_design)
    return sorted(name for name in shapes if name in statistics[0])


def _informed(plan: MergePlan, name: str, statistics: Sequence[Tensors]) -> bool:
    """Whether the method weighs ``name`` by its statistics rather than averaging it: RegMean where a weighted Gram
    saw some input feature, Fisher where some entry has non-zero weighted Fisher information (others: the mean)."""
    if name not in statistics[0]:
        return False
    stats = [s[name] for s in statistics]
    if plan.method.statistic == "gram":
        return not bool(unseen_features(stats, plan.weights).all())
    return any(bool(stat.any()) for stat, weight in zip(stats, plan.weights) if weight != 0)


def _warn_partly_seen(plan: MergePlan, statistics: Sequence[Tensors], names: Sequence[str]) -> None:
    """Once per merge: the weights with input features the calibration batches never made non-zero, whose
    columns RegMean cannot weigh and keeps at the weighted mean (``RegMeanMerge``; the pseudo-inverse made them 0)."""
    partly: dict[str, tuple[int, int]] = {}
    for name in names:
        unseen = unseen_features([s[name] for s in statistics], plan.weights)
        if unseen.any():
            partly[name] = (int(unseen.sum()), unseen.numel())
    if partly:
        name, (count, width) = next(iter(partly.items()))
        columns = "their ΔW's columns" if plan.kind == "lora" else "their columns"
        plan.warn(f"{len(partly)} {'adapted' if plan.kind == 'lora' else 'linear'} weights have input features the "
                  f"calibration batches never made non-zero (e.g. {name}: {count} of {width}): {columns} for those "
                  "features keep the weighted mean, which RegMean has nothing to weigh by")
