"""`mashup run`: select, merge, train from the merge, evaluate; optionally the from-scratch baseline."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mashup.config import RunConfig, TrainConfig, save_config
from mashup.data.target import TargetData, load_target, recorded_data_config
from mashup.evaluation import steps_to_parity
from mashup.io import atomic_output_dir, sha256_files, weight_files, write_json
from mashup.io.files import local_absolute
from mashup.library import CheckpointRecord, Library
from mashup.library.identity import stored_base
from mashup.scoring import CheckpointScore
from mashup.selection.prefilter import warm_prototype_cache
from mashup.training import INIT_WEIGHTS, ProgressFn, TrainResult, resolve_train_config
from mashup.verbs import SelectResult, TrainSummary, merge_statistics_batches, select, train_in
from mashup.provenance import write_version
from mashup.workspace import open_workspace

logger = logging.getLogger(__name__)
StageFn = Callable[[str], ProgressFn | None]


def _arm(summary: TrainSummary) -> dict[str, Any]:
    result = summary.result
    return {"init_accuracy": result.curve[0].accuracy, "final_accuracy": result.final.accuracy,
            "final_loss": result.final.loss, "total_steps": result.total_steps,
            "train_seconds": result.train_seconds, "eval_seconds": result.eval_seconds,
            "curve": [asdict(p) for p in result.curve], "train_config": summary.config}


PARITY_THRESHOLDS = (("p99", 0.99), ("p100", 1.0))


def parity(mashup: TrainResult, scratch: TrainResult, overhead_seconds: float = 0.0) -> dict[str, Any]:
    """When the Mashup arm first reaches 99% / 100% of scratch's final accuracy: step, share of the steps,
    training seconds, and seconds with the overhead (selection and merge) added, also as a ratio to the
    seconds scratch trained for. Every value is None where the threshold is never reached."""
    curve = [(p.step, p.accuracy) for p in mashup.curve]
    seconds = {p.step: p.seconds for p in mashup.curve}
    out = {}
    for name, fraction in PARITY_THRESHOLDS:
        step = steps_to_parity(curve, scratch.final.accuracy, fraction)
        reached = None if step is None else seconds[step]
        total = None if reached is None else overhead_seconds + reached
        out[name] = {"step": step, "fraction_of_steps": None if step is None else step / mashup.total_steps,
                     "train_seconds": reached, "seconds_with_overhead": total,
                     "ratio_to_scratch": None if total is None or scratch.train_seconds <= 0
                     else total / scratch.train_seconds}
    return out


def selection_timing(seconds: float, ranking: Sequence[CheckpointScore]) -> dict[str, float | int]:
    """Seconds actually spent, and what a cold selection would have cost (cached scores' recorded seconds)."""
    cached = [s for s in ranking if s.cached]
    return {"selection": seconds, "selection_uncached": seconds + sum(s.seconds for s in cached),
            "selection_cached_scores": len(cached)}


def summarize(config: RunConfig, selection: SelectResult, merge_seconds: float, mashup: TrainSummary,
              scratch: TrainSummary | None, target_name: str) -> dict[str, Any]:
    timing = selection_timing(selection.seconds, selection.ranking)
    summary: dict[str, Any] = {
        "target": target_name, "base": config.base, "mode": config.train.mode, "formulation": mashup.formulation,
        "precision": mashup.precision, "selected": selection.selected, "excluded": selection.excluded,
        "merge_method": config.merge.method, "requested_train_config": config.train.model_dump(mode="json"),
        "mashup": _arm(mashup),
        "seconds": {**timing, "merge": merge_seconds, "mashup_training": mashup.result.train_seconds},
    }
    if scratch is not None:
        summary["scratch"] = _arm(scratch)
        summary["seconds"]["scratch_training"] = scratch.result.train_seconds
        overhead = timing["selection_uncached"] + merge_seconds
        summary["parity"] = parity(mashup.result, scratch.result, overhead)
    return summary


def _same_shape_for_both_arms(requested: TrainConfig, init: Path) -> TrainConfig:
    """The config both arms train with: the merged init fixes the LoRA shape; say so if it differs."""
    resolved = resolve_train_config(requested, init)
    if resolved.lora_shape() != requested.lora_shape():
        changed = {k: (requested.lora_shape()[k], v) for k, v in resolved.lora_shape().items()
                   if requested.lora_shape()[k] != v}
        logger.warning("the merged init's LoRA shape differs from the requested one (%s); both arms use the "
                       "init's shape so that only the initialisation differs",
                       ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    return resolved


def run(config: RunConfig, stage: StageFn = lambda name: None, overwrite: bool = False) -> dict[str, Any]:
    """The whole method in one call; the run dir appears only when complete and its adapter registered."""
    from mashup.merging import merge_checkpoints

    workspace = open_workspace(config.base, config.data, config.precision)
    target = load_target(config.data)
    library = Library.existing(config.library)
    kind = config.train.mode
    out = Path(config.out).expanduser().absolute()  # where its records (summary, result.json) say it is

    added: list[CheckpointRecord] = []

    def register(final: Path) -> None:  # part of the commit: a failure here removes the run dir again
        lineage = {"merged_from": selection.selected, "merge_method": config.merge.method,
                   "trained_on": {"task": target.name, "data_fingerprint": target.fingerprint},
                   "run": str(final.absolute())}
        summary["registered"], new = _register(library, final / "mashup", kind, target, config.base, lineage)
        added.extend(new)
        try:
            write_json(final / "summary.json", summary)
        except BaseException:
            if new:  # weights registered before this run stay
                library.remove(summary["registered"])
            raise

    on_commit = register if config.add_to_library else None
    with atomic_output_dir(out, overwrite=overwrite, on_commit=on_commit) as tmp:
        save_config(_recorded(config, library.directory), tmp / "run_config.yaml")
        write_version(tmp)
        selection = select(config.base, config.data, config.select, config.library, kind=kind, merge=config.merge,
                           workspace=workspace, target=target, allow_pickle=config.allow_pickle)
        write_json(tmp / "scores.json", selection.to_dict())
        start = time.perf_counter()
        records = [library.get(i) for i in selection.selected]
        merge_checkpoints(records, config.merge, tmp / "merged", base_model_dir=workspace.base_dir,
                          calibration_batches=merge_statistics_batches(config.merge, workspace, target))
        merge_seconds = time.perf_counter() - start
        arm_config = _same_shape_for_both_arms(config.train, tmp / "merged")
        mashup = train_in(workspace, target, arm_config, config.eval, _mkdir(tmp / "mashup"), tmp / "merged",
                          stage("mashup"), config.allow_pickle, final_dir=out / "mashup")
        scratch = None
        if config.baseline:
            scratch = train_in(workspace, target, arm_config, config.eval, _mkdir(tmp / "scratch"), None,
                               stage("scratch"), config.allow_pickle, final_dir=out / "scratch")
        summary = summarize(config, selection, merge_seconds, mashup, scratch, target.name)
        if on_commit is None:  # else registering writes it: a run dir with summary.json is complete and registered
            write_json(tmp / "summary.json", summary)
    # after the commit, where an interruption costs only the cache: the next prefilter computes what is missing
    warm_prototype_cache(added, library.directory)
    return summary


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _register(library: Library, train_dir: Path, kind: str, target: TargetData, base: str,
              lineage: dict[str, Any]) -> tuple[str, list[CheckpointRecord]]:
    """Add the finished weights to the library with what they were trained on and merged from; a LoRA keeps
    its starting weights as task-vector reference. Identical weights already registered are reused (no
    record added). Returns the id and the records added."""
    weights = train_dir / ("adapter" if kind == "lora" else "model")
    existing = library.find_by_digest(sha256_files(weight_files(weights)))
    if existing is not None:
        logger.warning("identical weights are already registered as %s; not adding them again", existing.id)
        return existing.id, []
    reference = str(train_dir / INIT_WEIGHTS) if kind == "lora" else None
    records = library.add([weights], task=target.name, base=base, init_reference=reference,
                          metadata={"source": "mashup run"}, data_fingerprint=target.fingerprint, lineage=lineage)
    return records[0].id, records


def _recorded(config: RunConfig, library_dir: Path) -> RunConfig:
    """``config`` as the run dir records it: local paths absolute (the base as the library records one, the data as
    ``recorded_data_config``) and the library the run read (given or the default), so that ``run_config.yaml``
    names the same run from any working dir."""
    return config.model_copy(update={"base": stored_base(config.base), "data": recorded_data_config(config.data),
                                     "library": str(library_dir.absolute()),
                                     "out": local_absolute(config.out, must_exist=False)})
