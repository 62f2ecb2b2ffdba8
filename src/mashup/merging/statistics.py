"""Per-checkpoint statistics for Fisher and RegMean merges, computed on the caller's calibration batches."""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mashup.errors import MergeError
from mashup.library.records import CheckpointRecord
from mashup.merging.fisher import estimate_fisher
from mashup.merging.lora import base_weight_name
from mashup.merging.plan import MergePlan
from mashup.merging.regmean import conv1d_weights, estimate_gram, saw_inputs
from mashup.models import attach_adapter, load_model
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
    with warnings.catch_warnings():  # that it could not merge a lora_B bias into a bias-less layer: it can, below
        warnings.filterwarnings("ignore", message="`lora_bias=True` was passed but the targeted layer")
        adapted = attach_adapter(load_model(base_model_dir), Path(record.path), trainable=False)
    _zero_biases_to_fold_into(adapted)
    return adapted.merge_and_unload()


def _zero_biases_to_fold_into(model: torch.nn.Module) -> None:
    """PEFT folds a lora_B bias (lora_bias) into its base layer's bias: a base layer without one gets a zero bias
    to take it, which computes what the adapter does."""
    for module in model.modules():
        if any(getattr(module, "lora_bias", {}).values()):
            layer = module.get_base_layer()
            if getattr(layer, "bias", None) is None:
                layer.bias = torch.nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype,
                                                            device=layer.weight.device), requires_grad=False)


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
    if plan.kind == "full" and plan.method.statistic == "gram":
        _warn_without_gram(plan, statistics, by_design)
    return statistics


def _averaged_by_design(model: PreTrainedModel) -> set[str]:
    """The weights RegMean averages by design, by their files' names: the embeddings, the output head (a Linear
    head has a Gram all the same) and buffers."""
    head = model.get_output_embeddings()
    names = {f"{name}.weight" for name, module in model.named_modules()
             if isinstance(module, torch.nn.Embedding) or head is not None and module is head}
    names |= {name for name, _ in model.named_buffers()}
    return set(saved_names(model, names & model.state_dict().keys()).values())


def _warn_without_gram(plan: MergePlan, statistics: Sequence[Tensors], by_design: set[str]) -> None:
    """Warn, once per merge, of the 2-D weights of full checkpoints that RegMean averages for want of a Gram: no
    Linear or Conv1D layer takes them (transformers 5 fuses MoE experts into 3-D parameters and keeps routers as
    bare ones, while the files store 2-D weights per expert), or none that ran on the calibration batches."""
    without = sorted(name for name, shape in plan.records[0].shapes.items()
                     if len(shape) == 2 and name not in by_design and not _has_gram(name, statistics))
    if without:
        plan.warn(f"{len(without)} linear weights have no RegMean statistics and are averaged (e.g. {without[0]}: no "
                  "Linear or Conv1D layer that ran on the calibration batches takes it)")


def _has_gram(name: str, statistics: Sequence[Tensors]) -> bool:
    """Whether RegMean solves for weight ``name`` (merge_full takes the first checkpoint's names as all's)."""
    return name in statistics[0] and saw_inputs([stats[name] for stats in statistics])
