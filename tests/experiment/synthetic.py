"""Hand-made unit records, for tests of the analysis and the tables without training anything."""

from __future__ import annotations

from typing import Any

from mashup.experiment import ExperimentConfig
from mashup.experiment.jobs import early_drop


def record(kind: str, task: str, arm: str, result: dict[str, Any], seed: int | None = None,
           lr: float | None = None) -> dict[str, Any]:
    fields = {"phase": "", "kind": kind, "task": task, "arm": arm, "seed": seed, "lr": lr}
    parts = [kind, task, arm] + ([f"lr={lr:g}"] if lr is not None else []) + ([f"seed={seed}"] if seed is not None
                                                                              else [])
    return {"unit": "/".join(parts), "fields": fields, "result": result}


def run(task: str, arm: str, seed: int, lr: float, curve: list[tuple[int, float, float]], validation: float,
        validation_loss: float = 1.0) -> dict[str, Any]:
    """A training record; ``curve`` holds (step, test accuracy, training seconds so far)."""
    points = [{"step": s, "accuracy": a, "loss": 1.0, "train_loss": None, "seconds": t} for s, a, t in curve]
    result = {"curve": points, "total_steps": curve[-1][0], "train_seconds": curve[-1][2], "eval_seconds": 0.0,
              "test": {"accuracy": curve[-1][1], "loss": 1.0},
              "validation": {"accuracy": validation, "loss": validation_loss},
              "train_config": {"lr": lr}, "early_drop": early_drop(points, curve[-1][0])}
    return record("train", task, arm, result, seed, lr)


def as_records(*items: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["unit"]: item for item in items}


def two_task_config(**overrides: Any) -> ExperimentConfig:
    settings: dict[str, Any] = dict(tasks=["arc_easy", "sciq"], seeds=2, lrs=[1e-4, 1e-3], k=1, samples=16,
                                    arms=["scratch", "mashup_loss", "mashup_accuracy", "mashup_random", "oracle",
                                          "mashup_at_init"], out="unused")
    settings.update(overrides)
    return ExperimentConfig.model_validate(settings)
