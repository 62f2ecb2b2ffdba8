"""`mashup run`: select, merge, train from the merge, evaluate; optionally the from-scratch baseline."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mashup.config import RunConfig, save_config
from mashup.data.target import load_target
from mashup.evaluation import steps_to_parity
from mashup.io import atomic_output_dir, write_json
from mashup.library import Library
from mashup.training import INIT_WEIGHTS, ProgressFn, TrainResult
from mashup.verbs import SelectResult, TrainSummary, merge_statistics_batches, select, train_in
from mashup.workspace import open_workspace, write_version

logger = logging.getLogger(__name__)
StageFn = Callable[[str], ProgressFn | None]


def _arm(result: TrainResult) -> dict[str, Any]:
    return {"init_accuracy": result.curve[0].accuracy, "final_accuracy": result.final.accuracy,
            "final_loss": result.final.loss, "train_seconds": result.train_seconds,
            "curve": [(p.step, p.accuracy) for p in result.curve]}


def parity(mashup: TrainResult, scratch: TrainResult) -> dict[str, Any]:
    """Steps (and training seconds) at which the Mashup arm first reaches 99% / 100% of scratch's final accuracy."""
    curve = [(p.step, p.accuracy) for p in mashup.curve]
    seconds = {p.step: p.seconds for p in mashup.curve}
    out = {}
    for name, fraction in (("p99", 0.99), ("p100", 1.0)):
        step = steps_to_parity(curve, scratch.final.accuracy, fraction)
        out[name] = {"step": step, "fraction_of_steps": None if step is None else step / mashup.total_steps,
                     "train_seconds": None if step is None else seconds[step]}
    return out


def summarize(config: RunConfig, selection: SelectResult, merge_seconds: float, mashup: TrainSummary,
              scratch: TrainSummary | None, target_name: str) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "target": target_name, "base": config.base, "mode": config.train.mode, "formulation": mashup.formulation,
        "selected": selection.selected, "merge_method": config.merge.method,
        "mashup": _arm(mashup.result),
        "seconds": {"selection": selection.seconds, "merge": merge_seconds,
                    "mashup_training": mashup.result.train_seconds},
    }
    if scratch is not None:
        summary["scratch"] = _arm(scratch.result)
        summary["seconds"]["scratch_training"] = scratch.result.train_seconds
        summary["parity"] = parity(mashup.result, scratch.result)
        reached = summary["parity"]["p100"]["train_seconds"]
        summary["seconds"]["mashup_to_parity"] = (None if reached is None else
                                                  selection.seconds + merge_seconds + reached)
    return summary


def run(config: RunConfig, stage: StageFn = lambda name: None, overwrite: bool = False) -> dict[str, Any]:
    """The whole method in one call; the run dir appears only when complete and its adapter registered."""
    from mashup.merging import merge_checkpoints

    workspace = open_workspace(config.base, config.data, config.train.bf16)
    target = load_target(config.data)
    library = Library(config.library)
    kind = config.train.mode
    out = Path(config.out)

    def register(final: Path) -> None:  # part of the commit: a failure here removes the run dir again
        summary["registered"] = _register(library, final / "mashup", kind, target.name, config.base)
        try:
            write_json(final / "summary.json", summary)
        except BaseException:
            library.remove(summary["registered"])
            raise

    on_commit = register if config.add_to_library else None
    with atomic_output_dir(out, overwrite=overwrite, on_commit=on_commit) as tmp:
        save_config(config, tmp / "run_config.yaml")
        write_version(tmp)
        selection = select(config.base, config.data, config.select, config.library, kind=kind, workspace=workspace,
                           target=target, allow_pickle=config.allow_pickle)
        write_json(tmp / "scores.json", selection.to_dict())
        start = time.perf_counter()
        records = [library.get(i) for i in selection.selected]
        merge_checkpoints(records, config.merge, tmp / "merged", base_model_dir=workspace.base_dir,
                          calibration_batches=merge_statistics_batches(config.merge, workspace, target))
        merge_seconds = time.perf_counter() - start
        mashup = train_in(workspace, target, config.train, config.eval, _mkdir(tmp / "mashup"), tmp / "merged",
                          stage("mashup"), config.allow_pickle)
        scratch = None
        if config.baseline:
            scratch = train_in(workspace, target, config.train, config.eval, _mkdir(tmp / "scratch"), None,
                               stage("scratch"), config.allow_pickle)
        summary = summarize(config, selection, merge_seconds, mashup, scratch, target.name)
        write_json(tmp / "summary.json", summary)
    return summary


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _register(library: Library, train_dir: Path, kind: str, task: str, base: str) -> str:
    """Add the finished weights to the library; a LoRA keeps its starting weights as task-vector reference."""
    weights = train_dir / ("adapter" if kind == "lora" else "model")
    reference = str(train_dir / INIT_WEIGHTS) if kind == "lora" else None
    records = library.add([weights], task=task, base=base, init_reference=reference,
                          metadata={"source": "mashup run"})
    return records[0].id
