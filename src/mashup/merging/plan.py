"""Validate a merge request and resolve its settings before anything is read or written."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from mashup.config import MergeConfig
from mashup.errors import MergeError
from mashup.library.records import CheckpointRecord
from mashup.merging.base import MergeMethod, MergeParams
from mashup.merging.compat import check_records, lora_modules, output_rank, resolve_lora_mode
from mashup.merging.registry import get_merge_method, merge_tensors
from mashup.merging.regmean import RegMeanMerge

logger = logging.getLogger(__name__)
WEIGHT_SUM_TOLERANCE = 1e-8  # as ``safe_divisor``, below which the methods would skip the division


@dataclass
class MergePlan:
    """Everything a merge needs, resolved: method, weights, per-tensor parameters, LoRA layout, warnings."""

    method: MergeMethod
    records: list[CheckpointRecord]
    weights: list[float]
    params: MergeParams
    config: MergeConfig  # resolved: weights, density, normalize, lora_mode and lora_rank filled in
    kind: str
    lora_mode: str | None
    lora_rank: int | None = None  # output rank (ab: the common rank, delta: resolved, concat: set by the merge)
    template: CheckpointRecord | None = None  # whose adapter_config.json the output starts from
    modules: dict[str, tuple[int, int]] = field(default_factory=dict)  # delta/concat: all modules → (out, in)
    conv1d_weights: set[str] = field(default_factory=set)  # base weights stored (in, out); set with the statistics
    warnings: list[str] = field(default_factory=list)
    singular: list[str] = field(default_factory=list)  # tensors whose RegMean solve took the pseudo-inverse

    def warn(self, message: str) -> None:
        logger.warning(message)
        self.warnings.append(message)

    def merge(self, name: str, tensors: Sequence[torch.Tensor], reference: torch.Tensor | None, params: MergeParams,
              method: MergeMethod | None = None) -> torch.Tensor:
        """``merge_tensors`` of the tensor ``name`` (the plan's method unless ``method``, its weights and generator),
        noting it when RegMean's solve fell back to the pseudo-inverse (see ``warn_of_singular``)."""
        method = method or self.method
        regmean = method if isinstance(method, RegMeanMerge) else None
        before = regmean.singular if regmean else 0
        if regmean:
            regmean.quiet = True  # said once per merge by ``warn_of_singular``, with a count and a name
        merged = merge_tensors(method, tensors, self.weights, reference, params, self.generator(name))
        if regmean and regmean.singular > before:
            self.singular.append(name)
        return merged

    def warn_of_singular(self) -> None:
        """Once per merge, at its end: the tensors whose RegMean Gram sum was singular on the seen input features
        (reached only with negative weights or regmean_alpha 1), solved by the pseudo-inverse instead."""
        if self.singular:
            what = "adapted modules' ΔW" if self.kind == "lora" else "weights"
            self.warn(f"RegMean's Gram sum was singular on the seen input features of {len(self.singular)} {what} "
                      f"(e.g. {self.singular[0]}), which took the pseudo-inverse's least-norm solution; with "
                      "non-negative weights (and regmean_alpha < 1) it cannot be")

    def generator(self, tensor_name: str) -> torch.Generator:
        """A generator per tensor, so DARE masks do not depend on the order or sharding of tensors."""
        return torch.Generator().manual_seed((self.config.seed * 1_000_003 + zlib.crc32(tensor_name.encode())) % 2**63)

    def method_fallback(self) -> MergeMethod:
        """The weighted mean, for tensors a statistics-based method has no statistics for."""
        return get_merge_method("average")

    def params_for(self, statistics: Sequence[torch.Tensor] | None, transposed: bool = False) -> MergeParams:
        if statistics is None:
            return self.params
        return replace(self.params, statistics=list(statistics), transposed=transposed)

    @property
    def output_scale(self) -> float:
        """The LoRA scale of the output adapter: the template's (its alpha is rewritten to keep it)."""
        assert self.template is not None
        return self.template.lora_scale


def _mode_warnings(method: MergeMethod, config: MergeConfig, mode: str) -> list[str]:
    requested = config.lora_mode
    if method.statistic is not None and requested not in (None, "delta"):
        return [f"{method.name} merges LoRA adapters in delta space; lora_mode '{requested}' became 'delta'"]
    if requested == "ab" and not method.linear:
        return [f"lora_mode ab with {method.name}: trimming, dropping or sign election act on A and B "
                f"separately, which has no clear meaning for ΔW = s·B·A; lora_mode delta (the default for "
                f"{method.name}) applies them to ΔW"]
    if config.lora_rank is not None and mode != "delta":
        return [f"lora_rank {config.lora_rank} is ignored in lora_mode {mode} (it sets the delta-mode rank)"]
    return []


def _setting_warnings(method: MergeMethod, config: MergeConfig, density: float | None) -> list[str]:
    warnings = []
    if config.density is not None and not method.uses_density:
        warnings.append(f"density {config.density} is ignored by {method.name}")
    if density is not None and density >= 1.0:
        verb = "dropped" if getattr(method, "sparsify", None) == "random" else "trimmed"
        same = "sign election without trimming" if getattr(method, "consensus", False) else "task_arithmetic"
        warnings.append(f"density 1.0 with {method.name}: nothing is {verb}, so this is plain {same}; give a "
                        f"density below 1 (the default is {method.default_density})")
    if config.lambda_ != 1.0 and not method.uses_lambda:
        warnings.append(f"lambda {config.lambda_} is ignored by {method.name}")
    if config.sign != "mass" and not getattr(method, "consensus", False):
        warnings.append(f"sign {config.sign} is ignored by {method.name} (it has no sign election)")
    if config.normalize is not None and method.resolve_normalize(None) is None:
        warnings.append(f"normalize {str(config.normalize).lower()} is ignored by {method.name} (it always divides "
                        "by its weighted statistics)")
    return warnings


def _lora_layout(plan: MergePlan, requested_rank: int | None) -> None:
    """Fill in the union of modules (delta/concat), the output rank and the template record (LoRA only)."""
    if plan.lora_mode == "ab":
        plan.lora_rank = plan.records[0].lora_r
    else:
        for record in plan.records:
            for module, layer in lora_modules(record).items():
                plan.modules.setdefault(module, (layer.out_features, layer.in_features))
        plan.modules = dict(sorted(plan.modules.items()))
    if plan.lora_mode == "delta":
        plan.lora_rank = output_rank(plan.records, requested_rank)
    plan.template = next((r for r in plan.records if r.lora_r == plan.lora_rank), plan.records[0])


def _divides_by_weight_sum(method: MergeMethod, normalize: bool | None) -> bool:
    """Average and normalised task arithmetic / dare_linear / magnitude_prune divide by Σ w_i, Fisher and
    RegMean by Σ w_i·F_i and Σ w_i·G_i; ties and dare_ties divide each entry by its agreeing weights only."""
    return method.statistic is not None or (bool(normalize) and not getattr(method, "consensus", False))


def _check_weight_sum(method: MergeMethod, weights: Sequence[float], normalize: bool | None) -> None:
    """A weighted mean with weights summing to 0 has no value; the methods would silently skip the division."""
    if not _divides_by_weight_sum(method, normalize) or abs(sum(weights)) >= WEIGHT_SUM_TOLERANCE:
        return
    fix = "give weights with a non-zero sum" + (", or turn normalize off (--no-normalize)" if normalize else "")
    raise MergeError(f"the weights {list(weights)} sum to 0, and {method.name} divides by their sum", None, fix)


def build_plan(records: Sequence[CheckpointRecord], config: MergeConfig) -> MergePlan:
    """Check the inputs and resolve defaults; raises MergeError before any output exists. Settings the method
    ignores are noted in ``plan.warnings`` without being logged: callers that only check or export (``mashup
    merge`` checks before it reads the base) would repeat them; ``merge_checkpoints`` logs them once."""
    records = list(records)
    if not records:
        raise MergeError("no checkpoints to merge", None, "select at least one (k >= 1)")
    method = get_merge_method(config.method)
    weights = list(config.weights) if config.weights is not None else method.default_weights(len(records))
    if len(weights) != len(records):
        raise MergeError(f"{len(weights)} weights given for {len(records)} checkpoints", None,
                         "give one weight per checkpoint (k must not exceed the checkpoints available)")
    normalize = method.resolve_normalize(config.normalize)
    _check_weight_sum(method, weights, normalize)
    kind = records[0].kind
    lora_mode = resolve_lora_mode(method, config.lora_mode) if kind == "lora" else None
    check_records(records, method, lora_mode)
    if method.uses_lambda and config.lambda_ == 0 and lora_mode == "ab":
        raise MergeError(f"lambda 0 makes every LoRA factor of a {method.name} merge in mode ab zero: an adapter "
                         "holding none of the checkpoints, whose gradients are all zero, so it could not even train",
                         None, "give a non-zero --lambda / merge.lambda, or --lora-mode delta / merge.lora_mode: delta")
    density = method.resolve_density(config.density) if method.uses_density else None
    params = MergeParams(density=density, lambda_=config.lambda_, normalize=normalize, sign=config.sign)
    plan = MergePlan(method, records, weights, params, config, kind, lora_mode)
    if kind == "lora":
        _lora_layout(plan, config.lora_rank)
    plan.config = config.model_copy(update={
        "weights": weights, "density": density, "normalize": normalize, "lora_mode": lora_mode,
        "lora_rank": plan.lora_rank if lora_mode == "delta" else None})
    mode_warnings = _mode_warnings(method, config, lora_mode) if lora_mode is not None else []
    plan.warnings += mode_warnings + _setting_warnings(method, config, density)
    return plan
