"""Which catalog entries may be mixed in one run, and why the others may not.

Bases are compared by content (library.identity). LoRA adapters of different rank, target modules,
alpha or rsLoRA can be merged as ``delta`` (B·A, then refactored) or ``concat``; the ``ab`` mode
averages the A and B factors as stored, so there they must all match. The template that the others
must match is the most common signature among the candidates (or one given), never just the first; full
fine-tunes must fit the base's own tensors instead, where the base is a local dir of safetensors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

from mashup.io import sorted_shapes
from mashup.library.base_shapes import base_tensor_shapes, full_shapes_difference
from mashup.library.identity import BaseMatcher
from mashup.library.records import CheckpointRecord

LoraMode = Literal["ab", "delta", "concat"]
SHAPE_FREE_MODES = frozenset({"delta", "concat"})


def lora_signature(record: CheckpointRecord) -> tuple:
    return record.lora_r, tuple(sorted(record.target_modules or [])), record.lora_alpha, record.use_rslora


def _shapes_signature(record: CheckpointRecord) -> tuple:
    return sorted_shapes(record.shapes)


def _lora_difference(record: CheckpointRecord, template: CheckpointRecord) -> str | None:
    if record.lora_r != template.lora_r:
        return f"LoRA rank {record.lora_r} differs from {template.lora_r}"
    if sorted(record.target_modules or []) != sorted(template.target_modules or []):
        return f"target modules {record.target_modules} differ from {template.target_modules}"
    if record.lora_alpha != template.lora_alpha:
        return f"lora_alpha {record.lora_alpha:g} differs from {template.lora_alpha:g}"
    if record.use_rslora != template.use_rslora:
        return f"use_rslora {record.use_rslora} differs from {template.use_rslora}"
    return None


def _module_dims_differ(record: CheckpointRecord, template: CheckpointRecord) -> str | None:
    """For rank-free modes: a module both adapt must have the same in/out features (A: [r, in], B: [out, r])."""
    for name, shape in record.shapes.items():
        other = template.shapes.get(name)
        if other is None:
            continue
        dim = -1 if ".lora_A." in name else 0 if ".lora_B." in name else None
        if (dim is None and shape != other) or (dim is not None and shape[dim] != other[dim]):
            return f"parameter shapes differ ({name})"
    return None


def incompatibility(record: CheckpointRecord, reference: CheckpointRecord | None, base: str, kind: str, *,
                    lora_mode: LoraMode = "ab", matcher: BaseMatcher | None = None) -> str | None:
    """The reason ``record`` cannot join a run on ``base`` alongside ``reference``; None if it can."""
    reason = (matcher or BaseMatcher(base)).mismatch(record)
    if reason:
        return reason
    if record.kind != kind:
        return f"kind is {record.kind}, not {kind}"
    if record.use_dora:
        return "DoRA adapters are not supported for merging"
    if reference is None:
        return None
    if record.kind == "lora" and lora_mode in SHAPE_FREE_MODES:
        return _module_dims_differ(record, reference)
    if record.kind == "lora":
        difference = _lora_difference(record, reference)
        if difference:
            return f"{difference} (lora_mode ab merges factors as stored; --lora-mode delta or concat can mix them)"
    if record.shapes != reference.shapes:
        differing = next((n for n in record.shapes if reference.shapes.get(n) != record.shapes[n]), "tensor names")
        return f"parameter shapes differ ({differing})"
    return None


def most_common_template(records: Sequence[CheckpointRecord]) -> CheckpointRecord | None:
    """The first record with the most common LoRA signature and shapes (ties: the earliest signature)."""
    if not records:
        return None
    keys = [(lora_signature(r), _shapes_signature(r)) for r in records]
    counts = Counter(keys)
    best = max(counts.values())
    return next(r for r, key in zip(records, keys) if counts[key] == best)


def partition_compatible(
    records: Sequence[CheckpointRecord], base: str, kind: str, template: CheckpointRecord | None = None, *,
    lora_mode: LoraMode = "ab", base_id: str | None = None,
) -> tuple[list[CheckpointRecord], list[tuple[CheckpointRecord, str]]]:
    """Split into (compatible, [(excluded, reason)]), both in the order given.

    ``template`` fixes the rank/targets/alpha/shapes to match; by default the most common signature among
    the records on ``base`` of ``kind``, except that full fine-tunes are matched against the base's tensors
    where they can be read: the most common shapes can be those of broken or foreign checkpoints. ``base_id``
    is the base's content identity when the caller has the model dir at hand (``base_identity(dir)``);
    otherwise it is resolved from ``base`` offline.
    """
    matcher = BaseMatcher(base, base_id)
    first_pass = [(r, incompatibility(r, None, base, kind, lora_mode=lora_mode, matcher=matcher)) for r in records]
    base_shapes = base_tensor_shapes(base) if kind == "full" and template is None else None
    if base_shapes is None:
        template = template or most_common_template([r for r, reason in first_pass if reason is None])
    compatible: list[CheckpointRecord] = []
    rejected: list[tuple[CheckpointRecord, str]] = []
    for record, reason in first_pass:
        if reason is None and base_shapes is not None:
            reason = _base_difference(record, base_shapes)
        elif reason is None and record is not template:
            reason = incompatibility(record, template, base, kind, lora_mode=lora_mode, matcher=matcher)
        (rejected.append((record, reason)) if reason else compatible.append(record))
    return compatible, rejected


def _base_difference(record: CheckpointRecord, base_shapes: dict[str, list[int]]) -> str | None:
    difference = full_shapes_difference(record.shapes, base_shapes)
    return f"parameter shapes differ from the base's ({difference})" if difference else None
