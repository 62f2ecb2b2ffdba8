"""A cost model for the units, for ``--dry-run`` and the progress display's ETA.

The per-example costs were measured with SmolLM2-135M (fp32, cloze scoring, max length 96, batch 8,
OpenBookQA / SciQ / ARC-Easy) on the 2-core AVX2 CPU this project is developed on, and scale linearly
with the parameter count. On other
hardware the first finished units recalibrate it: every record keeps its measured seconds, and the
ratio of measured to estimated seconds rescales what remains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mashup.experiment.config import ExperimentConfig
from mashup.experiment.plan import Unit
from mashup.training import total_steps

REFERENCE_PARAMETERS = 134_515_008  # SmolLM2-135M
KNOWN_PARAMETERS = {"smollm2-135m": REFERENCE_PARAMETERS, "gemma3-270m": 268_098_176}


@dataclass(frozen=True)
class CostModel:
    """Seconds per train example (forward and backward), per scored example, and per model load."""

    train_example: float = 0.3
    eval_example: float = 0.25
    load: float = 1.5
    merge: float = 0.5

    def scaled(self, factor: float) -> CostModel:
        return CostModel(self.train_example * factor, self.eval_example * factor, self.load * factor,
                         self.merge * factor)


@dataclass(frozen=True)
class Sizes:
    train: int
    validation: int
    test: int


def parameter_count(base: str) -> int:
    """The base's parameter count from its weight headers when it is on disk, else a known size."""
    from mashup.named_models import NAMED_MODELS, default_cache_dir, is_converted
    from mashup.workspace import count_parameters

    local = default_cache_dir() / base if base in NAMED_MODELS else Path(base).expanduser()
    if local.is_dir() and (base not in NAMED_MODELS or is_converted(local)):
        return count_parameters(local)
    return KNOWN_PARAMETERS.get(base, REFERENCE_PARAMETERS)


def cost_model(config: ExperimentConfig) -> CostModel:
    factor = parameter_count(config.base) / REFERENCE_PARAMETERS * (1.5 if config.mode == "full" else 1.0)
    return CostModel().scaled(factor)


def unit_seconds(unit: Unit, config: ExperimentConfig, sizes: Sizes, model: CostModel,
                 candidates: int) -> float:
    """Estimated seconds of one unit."""
    test_eval = sizes.test * model.eval_example
    if unit.kind == "eval":
        return model.load + test_eval
    if unit.kind == "source":
        return 0.5
    if unit.kind == "select":
        samples = int(unit.arm.split(":")[1])
        return model.load + candidates * min(samples, sizes.train) * model.eval_example
    if unit.kind == "merge":
        return model.load + model.merge + test_eval
    train = config.train_config(unit.lr or config.lrs[0], unit.seed or 0)
    steps = total_steps(sizes.train, train)
    evaluations = math.ceil(steps / train.resolved_eval_every(steps))
    return (2 * model.load + steps * train.batch_size * model.train_example  # trains, then reloads to validate
            + evaluations * sizes.test * model.eval_example + sizes.validation * model.eval_example)


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def provably_shared(plan: dict[str, list[Unit]], config: ExperimentConfig, candidates: dict[str, int]) -> set[str]:
    """Units whose job is certain to equal another unit's (so it costs nothing), for an honest estimate.

    Every selection arm merges a k-subset of a target's n candidates with the same method, so at one
    (learning rate, seed) they train at most C(n, k) distinct inits; with the oracle all C(n, k) are
    trained at every learning rate, so sample-size sweep points are among them too. The merge-grid point
    (merge_method, k) is the Mashup (loss) arm's own merge.
    """
    shared: set[str] = set()
    by_setting: dict[tuple, list[Unit]] = {}
    for unit in plan["mashup"]:
        by_setting.setdefault((unit.task, unit.lr, unit.seed), []).append(unit)
    for (task, _, _), units in by_setting.items():
        shared |= {u.id for u in units[math.comb(candidates[task], config.k):]}
    merges: dict[str, list[Unit]] = {}
    for unit in plan["merges"]:
        if not unit.arm.startswith("grid:"):
            merges.setdefault(unit.task, []).append(unit)
    for task, units in merges.items():
        shared |= {u.id for u in units[math.comb(candidates[task], config.k):]}
    own_grid_point = f"grid:{config.merge_method}:{config.k}"
    for unit in plan["sweeps"] + plan["merges"]:
        sample_point = unit.arm.startswith("samples:") and "oracle" in config.arms
        if unit.arm == own_grid_point or sample_point:
            shared.add(unit.id)
    return shared
