"""The experiment's units, phase by phase, and how each becomes a concrete job once its inputs exist.

Planning is structural (it needs no results), so ``--dry-run`` can list every unit. Resolution turns
a unit into a job from the records of earlier phases: which checkpoints selection ranked first, which
learning rate won on the validation split, which merge a training run starts from.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mashup.config import MergeConfig
from mashup.experiment.analysis import best_lr, train_runs
from mashup.experiment.config import ExperimentConfig
from mashup.experiment.jobs import AnyJob, EvalJob, MergeJob, SelectJob, SourceJob, TrainJob, random_choice
from mashup.errors import MashupError, listed
from mashup.scoring import CheckpointScore, rank, selectable

PHASES = ("base", "scratch", "sources", "selection", "merges", "mashup", "sweeps")


@dataclass(frozen=True)
class Unit:
    """One unit of work: ``kind`` is the job it becomes, ``arm`` the comparison it belongs to."""

    phase: str
    kind: str
    task: str
    arm: str
    seed: int | None = None
    lr: float | None = None

    @property
    def id(self) -> str:
        parts = [self.kind, self.task, self.arm]
        if self.lr is not None:
            parts.append(f"lr={self.lr:g}")
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return "/".join(parts)


@dataclass
class Context:
    """What resolution needs: the config, the finished records so far, and run-wide facts."""

    config: ExperimentConfig
    root: str
    precision: str
    library: str
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    lora_shape: dict[str, Any] | None = None
    library_digest: str = ""

    def result(self, unit_id: str) -> dict[str, Any]:
        return self.records[unit_id]["result"]

    def job_fields(self, task: str) -> dict[str, Any]:
        config = self.config
        return {"root": self.root, "base": config.base, "precision": self.precision,
                "data": config.data_config(config.task(task)), "eval_batch_size": config.eval_batch_size}


def mashup_variants(config: ExperimentConfig, candidates: int) -> list[tuple[str, int | None]]:
    """(arm, seed) of every merge a target needs: one per selection arm, per seed for random selection,
    per combination for the oracle, per sample size (Figure 2) and per merge method x k (Figure 3)."""
    variants: list[tuple[str, int | None]] = []
    for arm in ("mashup_loss", "mashup_accuracy"):
        if arm in config.arms or (arm == "mashup_loss" and "mashup_at_init" in config.arms):
            variants.append((arm, None))
    if "mashup_random" in config.arms:
        variants += [("mashup_random", seed) for seed in config.seeds]
    variants += [(f"oracle:{i}", None) for i in range(config.oracle_combinations(candidates))]
    variants += [(f"samples:{n}", None) for n in config.samples_sweep if n != config.samples]
    variants += [(f"grid:{method}:{k}", None) for method, k in config.grid_points()]
    return variants


def plan_units(config: ExperimentConfig, candidates: dict[str, int]) -> dict[str, list[Unit]]:
    """Every unit of the experiment, by phase; ``candidates`` is the number of sources each target has."""
    tasks, seeds, lrs = [t.name for t in config.tasks], config.seeds, config.lrs
    trained = [a for a in config.arms if a in ("mashup_loss", "mashup_accuracy", "mashup_random")]
    plan: dict[str, list[Unit]] = {phase: [] for phase in PHASES}
    for task in tasks:
        variants = mashup_variants(config, candidates[task])
        plan["base"].append(Unit("base", "eval", task, "base"))
        plan["scratch"] += [Unit("scratch", "train", task, "scratch", s, lr) for lr in lrs for s in seeds]
        if config.library is None:
            plan["sources"].append(Unit("sources", "source", task, "source"))
        plan["selection"] += [Unit("selection", "select", task, f"samples:{n}") for n in config.sweep_samples()]
        plan["merges"] += [Unit("merges", "merge", task, arm, seed) for arm, seed in variants]
        plan["mashup"] += [Unit("mashup", "train", task, arm, s, lr) for arm in trained for lr in lrs for s in seeds]
        plan["mashup"] += [Unit("mashup", "train", task, arm, s, lr) for arm, _ in variants
                           if arm.startswith("oracle:") for lr in lrs for s in seeds]
        plan["sweeps"] += [Unit("sweeps", "train", task, arm, s) for arm, _ in variants
                           if arm.startswith(("samples:", "grid:")) for s in seeds]
    return plan


def resolve(unit: Unit, ctx: Context) -> AnyJob:
    """The job a unit stands for, built from the records of the phases before it."""
    return _RESOLVERS[unit.kind](unit, ctx)


def _resolve_eval(unit: Unit, ctx: Context) -> EvalJob:
    return EvalJob(**ctx.job_fields(unit.task))


def _resolve_source(unit: Unit, ctx: Context) -> SourceJob:
    """A task's source checkpoint: its from-scratch run at the learning rate that won on validation."""
    config = ctx.config
    lr = best_lr(train_runs(ctx.records, unit.task, "scratch"))
    seed = config.seeds[0]
    record = ctx.records[Unit("scratch", "train", unit.task, "scratch", seed, lr).id]
    return SourceJob(**ctx.job_fields(unit.task), library=ctx.library, train_artifact=record["artifact"],
                     mode=config.mode, lr=lr, seed=seed)


def planned_sources(ctx: Context) -> list[str] | None:
    """The source checkpoints this config's plan trained (None with a given library: all of it).

    A dir reused with a changed config keeps the earlier configs' sources in its library; ranking them
    too would make the results depend on the dir's history.
    """
    if ctx.config.library is not None:
        return None
    return sorted(ctx.result(Unit("sources", "source", t.name, "source").id)["checkpoint_id"]
                  for t in ctx.config.tasks)


def selection_merges(config: ExperimentConfig) -> list[MergeConfig]:
    """Every merge the experiment runs on selection's candidates, distinct, in order: the arms' ``merge_method``,
    then each ``merge_grid`` method. A given library's candidates must be mergeable under all of them."""
    methods = dict.fromkeys([config.merge_method, *(config.merge_grid.methods if config.merge_grid else [])])
    return [MergeConfig(method=method) for method in methods]


def _resolve_select(unit: Unit, ctx: Context) -> SelectJob:
    config = ctx.config
    samples = int(unit.arm.split(":")[1])
    # leave-one-out sources are trained from one init, and the plan counts each of them as a candidate: their
    # selection keeps the default filter (and the keys recorded under it)
    merges = selection_merges(config) if config.library is not None else None
    return SelectJob(**ctx.job_fields(unit.task), library=ctx.library, library_digest=ctx.library_digest,
                     sources=planned_sources(ctx), samples=samples, seed=config.selection_seed, mode=config.mode,
                     merges=merges)


def ranking(ctx: Context, task: str, samples: int | None = None, *, finite: bool = True) -> list[CheckpointScore]:
    """Selection's ranking of a target's candidates (by loss), on the arms' sample size unless given; ``finite``:
    without the checkpoints whose loss is not finite (``mashup select`` never selects them either)."""
    samples = samples or ctx.config.samples
    rows = ctx.result(Unit("selection", "select", task, f"samples:{samples}").id)["ranking"]
    scores = [CheckpointScore(**row) for row in rows]
    return selectable(scores) if finite else scores


def merge_checkpoint_ids(unit: Unit, ctx: Context) -> tuple[list[str], str]:
    """Which checkpoints a merge unit merges, and with which method."""
    ids, method = _chosen(unit, ctx)
    _require_count(unit, len(ids), int(unit.arm.split(":")[2]) if unit.arm.startswith("grid:") else ctx.config.k)
    return ids, method


def _require_count(unit: Unit, found: int, wanted: int) -> None:
    if found < wanted:
        raise MashupError(f"merge unit {unit.id} needs {wanted} checkpoints, but only {found} of the target's "
                          "candidates scored a finite loss", None, "check the sources' weights (`mashup library "
                          "verify`), or lower k")


def _chosen(unit: Unit, ctx: Context) -> tuple[list[str], str]:
    config, arm = ctx.config, unit.arm
    by_loss = ranking(ctx, unit.task)
    if arm == "mashup_loss":
        return [s.id for s in by_loss[:config.k]], config.merge_method
    if arm == "mashup_accuracy":
        return [s.id for s in rank(by_loss, "accuracy")[:config.k]], config.merge_method
    if arm == "mashup_random":
        _require_count(unit, len(by_loss), config.k)
        return random_choice([s.id for s in by_loss], config.k, unit.task, unit.seed or 0), config.merge_method
    if arm.startswith("oracle:"):
        return _oracle_combination(unit, ctx), config.merge_method
    if arm.startswith("samples:"):
        return [s.id for s in ranking(ctx, unit.task, int(arm.split(":")[1]))[:config.k]], config.merge_method
    _, method, k = arm.split(":")
    return [s.id for s in by_loss[:int(k)]], method


def _oracle_combination(unit: Unit, ctx: Context) -> list[str]:
    """The oracle unit's combination of k candidates, by its index among every combination as planned from the
    candidates' count (those whose loss is not finite too, so that the index means what was planned); refused
    when it holds one of those: its NaN or inf weights would fail the merge."""
    every = ranking(ctx, unit.task, finite=False)
    combination = list(itertools.combinations(sorted(s.id for s in every), ctx.config.k))[int(unit.arm.split(":")[1])]
    bad = sorted(s.id for s in every if s.id in combination and not s.finite)
    if bad:
        raise MashupError(f"oracle unit {unit.id} would merge checkpoint(s) whose selection loss is not finite: "
                          f"{listed(bad)}", None, "check their weights (`mashup library verify`), or leave "
                          "'oracle' out of the arms")
    return list(combination)


def _resolve_merge(unit: Unit, ctx: Context) -> MergeJob:
    from mashup.library import Library

    ids, method = merge_checkpoint_ids(unit, ctx)
    ids = sorted(ids)  # a merge of equally weighted checkpoints is a set: one order, so equal merges share a key
    library = Library(Path(ctx.root) / ctx.library)
    return MergeJob(**ctx.job_fields(unit.task), library=ctx.library, checkpoint_ids=ids,
                    checkpoint_digests=[library.get(i).sha256 for i in ids], merge=MergeConfig(method=method))


def merge_unit_for(unit: Unit) -> Unit:
    """The merge a Mashup training unit starts from."""
    seed = unit.seed if unit.arm == "mashup_random" else None
    return Unit("merges", "merge", unit.task, unit.arm, seed)


def _resolve_train(unit: Unit, ctx: Context) -> TrainJob:
    config = ctx.config
    fields = ctx.job_fields(unit.task)
    if unit.arm == "scratch":
        initial = ctx.result(Unit("base", "eval", unit.task, "base").id)["test"]
        keep = config.library is None and unit.seed == config.seeds[0]  # a future source: keep its weights
        train = config.train_config(unit.lr, unit.seed, ctx.lora_shape)  # type: ignore[arg-type]
        return TrainJob(**fields, train=train, initial=initial, keep_weights=keep)
    lr = unit.lr if unit.lr is not None else best_lr(train_runs(ctx.records, unit.task, "mashup_loss"))
    merge = ctx.records[merge_unit_for(unit).id]
    return TrainJob(**fields, train=config.train_config(lr, unit.seed, ctx.lora_shape),  # type: ignore[arg-type]
                    init=merge["artifact"], initial=merge["result"]["test"])


_RESOLVERS = {"eval": _resolve_eval, "source": _resolve_source, "select": _resolve_select, "merge": _resolve_merge,
              "train": _resolve_train}
