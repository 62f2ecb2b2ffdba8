"""The merge entry point used by the rest of the package: records in, a loadable checkpoint dir out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mashup.config import MergeConfig, save_config
from mashup.io import atomic_output_dir, write_json
from mashup.errors import MashupError
from mashup.library.identity import base_identity, resolve_identity
from mashup.library.records import CheckpointRecord
from mashup.merging.compat import reference_key
from mashup.merging.full import merge_full
from mashup.merging.lora import merge_lora
from mashup.merging.plan import build_plan
from mashup.merging.statistics import compute_statistics
from mashup.provenance import write_version

logger = logging.getLogger(__name__)
CONFIG_NAME = "merge_config.yaml"
REPORT_NAME = "merge_report.json"


@dataclass
class MergeReport:
    """What was merged and how; ``svd_module_errors`` holds per-module truncation errors (LoRA delta mode).

    ``density`` and ``lora_mode`` are the resolved values (the method's defaults when none was given);
    ``lora_rank`` is the rank of the written adapter; ``reference`` the task-vector reference identity;
    ``base`` the base model (its spelling, the dir read, if any, and its content identity); ``calibration`` the
    data Fisher / RegMean statistics came from, as the caller describes it (target, fingerprint, examples, ...).
    """

    method: str
    kind: str
    checkpoint_ids: list[str]
    weights: list[float]
    lora_mode: str | None
    seconds: float
    svd_relative_error: float | None
    warnings: list[str]
    svd_module_errors: dict[str, float] = field(default_factory=dict)
    density: float | None = None
    lora_rank: int | None = None
    reference: str | None = None
    base: dict[str, str | None] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge_checkpoints(records: Sequence[CheckpointRecord], config: MergeConfig, out_dir: Path, *,
                      base_model_dir: Path | None = None,
                      calibration_batches: Sequence[dict[str, torch.Tensor]] | None = None,
                      overwrite: bool = False, base: str | None = None, calibration: dict[str, Any] | None = None,
                      on_commit: Callable[[Path], None] | None = None, base_id: str | None = None) -> MergeReport:
    """Merge checkpoints of one kind into ``out_dir`` (a PEFT adapter dir or an HF model dir).

    ``base`` is how the caller named the base (default: the first record's), for the report; ``mashup merge``
    (``mashup.verbs.merge``) checks that it is the records' base. ``base_id`` is its content identity where the
    caller has it (``base_identity_of``; None: found here). Beside the weights: the resolved config, the
    report and the package versions (version.json). Writes atomically: on any error (MergeError for bad inputs, NaN/inf,
    mismatches) nothing is left; ``on_commit(out_dir)`` runs once the output is in place, and if it raises the
    output is removed again.
    """
    start = time.perf_counter()
    plan = build_plan(records, config)
    for message in plan.warnings:
        logger.warning(message)
    base_info = _base_info(plan.records, base, Path(base_model_dir) if base_model_dir else None, base_id)
    statistics = compute_statistics(plan, Path(base_model_dir) if base_model_dir else None, calibration_batches)
    errors: dict[str, float] = {}
    with atomic_output_dir(Path(out_dir), overwrite=overwrite, on_commit=on_commit) as tmp:
        if plan.kind == "lora":
            errors = merge_lora(plan, tmp, statistics)
        else:
            merge_full(plan, tmp, Path(base_model_dir) if base_model_dir else None, statistics)
        overall = errors.pop("__overall__", None)
        report = MergeReport(
            method=plan.method.name, kind=plan.kind, checkpoint_ids=[r.id for r in plan.records],
            weights=list(plan.weights), lora_mode=plan.lora_mode, seconds=round(time.perf_counter() - start, 3),
            svd_relative_error=overall, warnings=list(plan.warnings), svd_module_errors=errors,
            density=plan.params.density, lora_rank=plan.lora_rank,
            reference=reference_key(plan.records[0], plan.method, plan.lora_mode),  # type: ignore[arg-type]
            base=base_info, calibration=calibration,
        )
        save_config(plan.config, tmp / CONFIG_NAME)
        write_json(tmp / REPORT_NAME, report.to_dict())
        write_version(tmp)
    logger.info("merged %d %s checkpoints with %s in %.1fs", len(plan.records), plan.kind, plan.method.name,
                report.seconds)
    return report


def base_identity_of(base: str, base_dir: Path | None) -> str | None:
    """The content identity of the base a merge reads: of ``base_dir`` where it reads one (None if its weights
    cannot be read: the merge itself says so where it reads them), else of what ``base`` names locally."""
    if base_dir is None:
        return resolve_identity(base)
    try:
        return base_identity(base_dir)
    except (MashupError, OSError):
        return None


def _base_info(records: Sequence[CheckpointRecord], base: str | None, base_dir: Path | None,
               identity: str | None) -> dict[str, str | None]:
    """What the report records of the base: its spelling, the dir the merge read (if any) and its identity (the
    current one: a record may hold a ``legacy_base_identity``, which the merge's registration would not match)."""
    spelled = base or records[0].base_model
    identity = identity or base_identity_of(spelled, base_dir)
    if base_dir is None:
        identity = identity or records[0].base_identity
    return {"model": spelled, "dir": str(base_dir.absolute()) if base_dir else None, "identity": identity}
