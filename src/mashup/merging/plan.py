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
from mashup.merging.registry import get_merge_method

logger = logging.getLogger(__name__)


@dataclass
class MergePlan:
    """Everything a merge needs, resolved: method, weights, per-tensor parameters, warnings."""

    method: MergeMethod
    records: list[CheckpointRecord]
    weights: list[float]
    params: MergeParams
    config: MergeConfig  # resolved: weights, normalize and lora_mode filled in
    kind: str
    lora_mode: str | None
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        logger.warning(message)
        self.warnings.append(message)

    def generator(self, tensor_name: str) -> torch.Generator:
        """A generator per tensor, so DARE masks do not depend on the order or sharding of tensors."""
        return torch.Generator().manual_seed((self.config.seed * 1_000_003 + zlib.crc32(tensor_name.encode())) % 2**63)

    def method_fallback(self) -> MergeMethod:
        """The weighted mean, for tensors a statistics-based method has no statistics for."""
        return get_merge_method("average")

    def params_for(self, statistics: Sequence[torch.Tensor] | None) -> MergeParams:
        return self.params if statistics is None else replace(self.params, statistics=list(statistics))


def _check_same(records: Sequence[CheckpointRecord], attribute: str, what: str) -> None:
    first = getattr(records[0], attribute)
    for record in records[1:]:
        if getattr(record, attribute) != first:
            raise MergeError(f"{what} differs: {record.id or record.path} has {getattr(record, attribute)!r}, "
                             f"{records[0].id or records[0].path} has {first!r}", None,
                             "merge only checkpoints that share it")


def _check_records(records: Sequence[CheckpointRecord]) -> None:
    _check_same(records, "kind", "checkpoint kind")
    if records[0].kind == "lora":
        if any(r.use_dora for r in records):
            raise MergeError("DoRA adapters cannot be merged", None, "use plain LoRA adapters")
        _check_same(records, "lora_r", "LoRA rank")
        _check_same(records, "target_modules", "LoRA target modules")
        _check_same(records, "use_rslora", "use_rslora (rsLoRA and LoRA scale differently)")
    first = records[0].shapes
    for record in records[1:]:
        if record.shapes.keys() != first.keys():
            missing = sorted(set(first) ^ set(record.shapes))[:3]
            raise MergeError(f"tensor names differ between checkpoints (e.g. {missing})", record.path)
        bad = next((n for n in first if record.shapes[n] != first[n]), None)
        if bad is not None:
            raise MergeError(f"tensor {bad} has shape {record.shapes[bad]} but {first[bad]} in "
                             f"{records[0].id or records[0].path}", record.path, "merge checkpoints of one base")


def _resolve_lora_mode(plan_method: MergeMethod, config: MergeConfig, warnings: list[str]) -> str:
    mode = config.lora_mode
    if plan_method.statistic is not None and mode != "delta":
        warnings.append(f"{plan_method.name} merges LoRA adapters in delta space; lora_mode '{mode}' became 'delta'")
        return "delta"
    if mode == "concat" and plan_method.name not in ("average", "task_arithmetic"):
        raise MergeError(f"lora_mode concat only supports average/task_arithmetic, not {plan_method.name}", None,
                         "use lora_mode delta (exact ΔW merge, then SVD) or ab")
    return mode


def build_plan(records: Sequence[CheckpointRecord], config: MergeConfig) -> MergePlan:
    """Check the inputs and resolve defaults; raises MergeError before any output exists."""
    records = list(records)
    if not records:
        raise MergeError("no checkpoints to merge", None, "select at least one (k >= 1)")
    method = get_merge_method(config.method)
    weights = list(config.weights) if config.weights is not None else method.default_weights(len(records))
    if len(weights) != len(records):
        raise MergeError(f"{len(weights)} weights given for {len(records)} checkpoints", None,
                         "give one weight per checkpoint (k must not exceed the checkpoints available)")
    _check_records(records)
    warnings: list[str] = []
    kind = records[0].kind
    lora_mode = _resolve_lora_mode(method, config, warnings) if kind == "lora" else None
    normalize = method.resolve_normalize(config.normalize)
    resolved = config.model_copy(update={"weights": weights, "normalize": normalize,
                                         "lora_mode": lora_mode or config.lora_mode})
    params = MergeParams(density=config.density, lambda_=config.lambda_, normalize=normalize, sign=config.sign)
    plan = MergePlan(method, records, weights, params, resolved, kind, lora_mode)
    for message in warnings:
        plan.warn(message)
    if config.density != 1.0 and not method.uses_density:
        plan.warn(f"density {config.density} is ignored by {method.name}")
    if config.lambda_ != 1.0 and not method.uses_lambda:
        plan.warn(f"lambda {config.lambda_} is ignored by {method.name}")
    return plan
