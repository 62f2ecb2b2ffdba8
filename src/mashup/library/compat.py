"""Which catalog entries may be mixed in one run, and why the others may not."""

from __future__ import annotations

from collections.abc import Sequence

from mashup.library.records import CheckpointRecord


def incompatibility(record: CheckpointRecord, reference: CheckpointRecord | None, base: str, kind: str) -> str | None:
    """The reason ``record`` cannot join a run on ``base`` alongside ``reference``; None if it can."""
    if record.base_model != base:
        return f"base model is '{record.base_model}', not '{base}'"
    if record.kind != kind:
        return f"kind is {record.kind}, run uses {kind}"
    if record.use_dora:
        return "DoRA adapters are not supported for merging"
    if reference is None:
        return None
    if record.kind == "lora":
        if record.lora_r != reference.lora_r:
            return f"LoRA rank {record.lora_r} differs from {reference.lora_r}"
        if sorted(record.target_modules or []) != sorted(reference.target_modules or []):
            return f"target modules {record.target_modules} differ from {reference.target_modules}"
    if record.shapes != reference.shapes:
        differing = next((n for n in record.shapes if reference.shapes.get(n) != record.shapes[n]), "tensor names")
        return f"parameter shapes differ ({differing})"
    return None


def partition_compatible(
    records: Sequence[CheckpointRecord], base: str, kind: str, template: CheckpointRecord | None = None
) -> tuple[list[CheckpointRecord], list[tuple[CheckpointRecord, str]]]:
    """Split into (compatible, [(incompatible, reason)]).

    ``template`` fixes the rank/targets/shapes to match; by default the first record on the base sets them.
    """
    compatible: list[CheckpointRecord] = []
    rejected: list[tuple[CheckpointRecord, str]] = []
    for record in records:
        reason = incompatibility(record, template, base, kind)
        if reason is None and template is None:
            template = record
        (rejected.append((record, reason)) if reason else compatible.append(record))
    return compatible, rejected
