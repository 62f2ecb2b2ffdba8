"""What a run checks before it writes anything: the out dir, the base, a given library and the targets' data."""

from __future__ import annotations

from typing import Any

from mashup.data.target import TargetData, load_target
from mashup.errors import LibraryError, MashupError
from mashup.experiment.config import ExperimentConfig
from mashup.experiment.sources import candidate_counts, usable_candidates
from mashup.experiment.store import ResultStore


def _check_out(store: ResultStore) -> None:
    """An ``out`` that exists must be an experiment dir (a run resumes it) or empty: a run writes into it."""
    root = store.root
    if root.exists() and not root.is_dir():
        raise MashupError("the experiment's out is a file, not a dir", str(root), "pick a new or empty dir for --out")
    # units/ is made first (ResultStore.open), so even a run killed at once resumes; an experiment.yaml alone may
    # be the user's own config, which a run would overwrite
    if not root.is_dir() or store.units_dir.is_dir():
        return
    if next(root.iterdir(), None) is not None:
        raise MashupError("the out dir is not empty and holds no experiment (no units/ of an earlier run)", str(root),
                          "pick a new or empty dir for --out (or the config's `out`)")


def _check_library(directory: str) -> None:
    """A given library must exist: a mistyped path is an error, not a library short of candidates."""
    from mashup.library import Library

    try:
        Library.existing(directory)
    except LibraryError as exc:
        raise LibraryError(exc.what, exc.where, "check the config's `library:` (a relative path is read from the "
                           "current dir), or register checkpoints with `mashup library add` first") from None


def preflight(config: ExperimentConfig, store: ResultStore) -> dict[str, TargetData]:
    """Every check before anything is written; the targets' data, by task name."""
    from mashup.models import check_base_available

    _check_out(store)
    check_base_available(config.base)  # merge method names are checked when the config loads
    if config.library is not None:
        _check_library(config.library)
    return {task.name: load_target(config.data_config(task)) for task in config.tasks}


def given_library(config: ExperimentConfig, targets: dict[str, TargetData]
                  ) -> tuple[dict[str, int], dict[str, Any] | None]:
    """Candidates per target in a given library (as its selection will find them: mergeable under every merge
    the experiment runs), and the one LoRA shape both arms then share."""
    from mashup.candidates import describe_shortage

    usable = usable_candidates(config, targets)
    short = {name: line for name, found in usable.items()
             if (line := describe_shortage(found, config.largest_k(), config.mode, config.base))}
    if short:
        name, line = next(iter(short.items()))
        others = f" (and {len(short) - 1} more target(s))" if len(short) > 1 else ""
        raise MashupError(f"the library is short of candidates for target '{name}': {line}{others}",
                          config.library,
                          "add checkpoints, lower k (or merge_grid's k), or merge with methods that accept them all")
    counts = candidate_counts(config, usable=usable)
    if config.mode != "lora":
        return counts, None
    records = {r.id: r for found in usable.values() for r in found.records}.values()
    shapes = {(r.lora_r, r.lora_alpha, tuple(r.target_modules or ()), r.use_rslora) for r in records}
    if len(shapes) != 1:
        raise MashupError(f"the library's LoRA adapters come in {len(shapes)} shapes (r, alpha, targets, rsLoRA)",
                          config.library, "both arms must share one shape: use a library of one shape")
    r, alpha, modules, rslora = shapes.pop()
    return counts, {"lora_r": r, "lora_alpha": alpha, "target_modules": list(modules), "use_rslora": rslora}
