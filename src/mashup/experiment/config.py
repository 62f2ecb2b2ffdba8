"""The experiment's typed configuration: the paper's protocol as one YAML file (or a built-in profile).

The top-level keys ``base``, ``tasks``, ``mode``, ``seeds``, ``lrs``, ``max_steps``, ``epochs``, ``eval_every``,
``batch_size``, ``samples``, ``k``, ``merge_method``, ``arms``, ``scoring`` and ``out`` are fixed: users and docs
rely on them. The remaining keys are optional refinements (budgets, the opt-in sweeps, a given library).
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PositiveInt, field_validator, model_validator

from mashup.config import (MAX_LR, DataConfig, Finite, Precision, Scoring, StageConfig, TrainConfig, TrainMode,
                           load_config)
from mashup.errors import MashupError

Arm = Literal["scratch", "mashup_loss", "mashup_accuracy", "mashup_random", "oracle", "mashup_at_init"]
TRAINED_ARMS: tuple[Arm, ...] = ("scratch", "mashup_loss", "mashup_accuracy", "mashup_random", "oracle")
MASHUP_ARMS: tuple[Arm, ...] = ("mashup_loss", "mashup_accuracy", "mashup_random", "oracle")
DEFAULT_ARMS: list[Arm] = ["scratch", "mashup_loss", "mashup_accuracy", "mashup_random", "mashup_at_init"]
# The paper's sweeps (appendix B, Table 9): five learning rates per mode, tuned per task and arm.
DEFAULT_LRS: dict[str, list[float]] = {"lora": [5e-5, 1.6e-4, 2.7e-4, 3.8e-4, 5e-4],
                                       "full": [5e-6, 1.6e-5, 2.7e-5, 3.8e-5, 5e-5]}
GRID_METHODS = ["average", "ties", "dare_ties", "task_arithmetic"]
PROFILES_PACKAGE = "mashup.experiment.profiles"
PositiveFinite = Annotated[Finite, Field(gt=0)]


def _known_merge_method(name: str) -> str:
    from mashup.merging import merge_method_names

    if name not in merge_method_names():
        raise ValueError(f"unknown merge method '{name}'; use one of: {', '.join(merge_method_names())}")
    return name


MergeMethodName = Annotated[str, AfterValidator(_known_merge_method)]


class TaskSpec(StageConfig):
    """A target task: a named benchmark (just ``name``) or user files (``name``, ``train`` and ``test``)."""

    name: str = Field(min_length=1)
    train: str | None = None
    test: str | None = None

    @model_validator(mode="after")
    def _named_or_files(self) -> TaskSpec:
        from mashup.data.tasks import is_task_name

        if self.train is None and self.test is not None:
            raise ValueError(f"task '{self.name}': a test file needs a train file")
        if self.train is None and not is_task_name(self.name):
            raise ValueError(f"task '{self.name}' is not a named task; give its train (and test) file, or use a "
                             "name from `mashup tasks list`")
        return self


class MergeGrid(StageConfig):
    """Figure 3: every merge method x k, each trained at the Mashup (loss) arm's best learning rate."""

    methods: list[MergeMethodName] = Field(default_factory=lambda: list(GRID_METHODS), min_length=1)
    k: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 3], min_length=1)


class ExperimentConfig(StageConfig):
    """Leave-one-out Mashup vs from-scratch over ``tasks``, with seeds, a learning-rate sweep per arm and
    the selection baselines (see docs in the README's experiment section)."""

    base: str = "smollm2-135m"
    tasks: list[TaskSpec] = Field(min_length=1)
    mode: TrainMode = "lora"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    lrs: list[PositiveFinite] = Field(default_factory=list, description="default: the paper's five per mode")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps per run (default: from epochs)")
    epochs: Finite = Field(1.0, gt=0)
    eval_every: int | None = Field(None, gt=0, description="steps between test evaluations (default: 10%)")
    batch_size: int = Field(32, gt=0)
    samples: int = Field(256, gt=0, description="train examples each checkpoint is scored on for selection")
    k: int = Field(2, gt=0)
    merge_method: MergeMethodName = "average"
    arms: list[Arm] = Field(default_factory=lambda: list(DEFAULT_ARMS))
    scoring: Scoring = "auto"
    out: str = "runs/experiment"
    # optional refinements
    library: str | None = Field(None, description="take the sources from this library instead of training them")
    validation_size: Finite = Field(0.1, gt=0, description="share (<1) or count of train held out to pick the LR")
    max_length: int = Field(384, gt=0)
    max_test_examples: int | None = Field(None, gt=0, description="cap on each task's reported test split")
    eval_batch_size: int = Field(16, gt=0)
    selection_seed: int = 0
    samples_sweep: list[PositiveInt] = Field(default_factory=list,
                                             description="Figure 2 (opt-in): selection sample sizes")
    merge_grid: MergeGrid | None = Field(None, description="Figure 3 (opt-in): merge methods x k")
    precision: Precision | None = None

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_names(cls, value: Any) -> Any:
        return [{"name": item} if isinstance(item, str) else item for item in value] if isinstance(value, list) \
            else value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError("seeds must be a count >= 1 or a list of seeds")
            return list(range(value))
        return value

    @field_validator("seeds")
    @classmethod
    def _non_negative_seeds(cls, seeds: list[int]) -> list[int]:
        negative = [seed for seed in seeds if seed < 0]
        if negative:
            raise ValueError(f"seeds must be >= 0, got {negative}; use non-negative seeds, e.g. seeds: [0, 1, 2], or "
                             "a count (seeds: 3 means 0, 1, 2)")
        return seeds

    @field_validator("selection_seed")
    @classmethod
    def _non_negative_selection_seed(cls, seed: int) -> int:
        # selection samples with random.Random, which seeds with the absolute value: -3 would silently draw
        # seed 3's sample under another job key
        if seed < 0:
            raise ValueError(f"selection_seed must be >= 0, got {seed} (a negative seed draws the same sample as "
                             f"{-seed})")
        return seed

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names repeat: {names}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if not self.lrs:
            self.lrs = list(DEFAULT_LRS[self.mode])
        if any(lr <= 0 or lr > MAX_LR for lr in self.lrs) or len(set(self.lrs)) != len(self.lrs):
            raise ValueError(f"lrs must be distinct, positive and at most {MAX_LR:g}, got {self.lrs}")
        if "scratch" not in self.arms:
            raise ValueError("arms must include 'scratch': every table compares against it")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms repeat: {self.arms}")
        if (self.samples_sweep or self.merge_grid) and "mashup_loss" not in self.arms:
            raise ValueError("samples_sweep and merge_grid train at the mashup_loss arm's best LR: add that arm")
        if self.library is None:
            self._check_k_against_sources(len(self.tasks) - 1)
        return self

    def _check_k_against_sources(self, sources: int) -> None:
        if sources < 1:
            raise ValueError("leave-one-out needs at least 2 tasks (or a given library)")
        if self.largest_k() > sources:
            raise ValueError(f"k={self.largest_k()} but each target has only {sources} source task(s) (the other "
                             "tasks)")

    def largest_k(self) -> int:
        """The most checkpoints any merge of the experiment takes: ``k``, or a larger ``merge_grid`` k."""
        return max([self.k, *(self.merge_grid.k if self.merge_grid else [])])

    # --- what the units are made of ---

    def data_config(self, task: TaskSpec) -> DataConfig:
        """How a task is loaded: validation carved from its train split, the test split capped as asked."""
        return DataConfig(data=task.train or task.name, name=task.name, train=task.train, test=task.test,
                          scoring=self.scoring, max_length=self.max_length, validation_size=self.validation_size,
                          max_test_examples=self.max_test_examples)

    def train_config(self, lr: float, seed: int, shape: dict[str, Any] | None = None) -> TrainConfig:
        """One run's training settings; ``shape`` fixes the LoRA shape (r, alpha, targets, ...) of both arms."""
        return TrainConfig(mode=self.mode, lr=lr, epochs=self.epochs, batch_size=self.batch_size,
                           max_steps=self.max_steps, eval_every=self.eval_every, seed=seed, **(shape or {}))

    def task(self, name: str) -> TaskSpec:
        return next(t for t in self.tasks if t.name == name)

    def sweep_samples(self) -> list[int]:
        """Every selection sample size that is scored: the arms' own, then Figure 2's."""
        return sorted({self.samples, *self.samples_sweep})

    def grid_points(self) -> list[tuple[str, int]]:
        return [(m, k) for m in self.merge_grid.methods for k in self.merge_grid.k] if self.merge_grid else []

    def oracle_combinations(self, candidates: int) -> int:
        return math.comb(candidates, self.k) if "oracle" in self.arms else 0


def profile_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(PROFILES_PACKAGE).iterdir()
                  if p.name.endswith(".yaml"))


def load_profile(name: str) -> ExperimentConfig:
    """A built-in profile (``cpu-mini``, ``paper-smollm2``, ``paper-gemma3``) shipped with the package."""
    if name not in profile_names():
        raise MashupError(f"unknown experiment profile '{name}'", None, f"use one of: {', '.join(profile_names())}")
    with resources.as_file(resources.files(PROFILES_PACKAGE) / f"{name}.yaml") as path:
        return load_experiment_config(path)


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    return load_config(Path(path), ExperimentConfig)
