"""Tiny leave-one-out experiments: three file tasks on the tiny model, budgets of a few steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mashup.experiment import ExperimentConfig
from tests.conftest import write_mc_jsonl

TASKS = ("alpha", "beta", "gamma")
TIMING = frozenset({"finished", "reused", "selection", "selection_uncached"})  # besides any "*seconds*" key


def write_tasks(root: Path) -> list[dict[str, str]]:
    tasks = []
    for i, name in enumerate(TASKS):
        directory = root / name
        directory.mkdir(parents=True, exist_ok=True)
        write_mc_jsonl(directory / "train.jsonl", 40, seed=i)
        write_mc_jsonl(directory / "test.jsonl", 12, seed=100 + i)
        tasks.append({"name": name, "train": str(directory / "train.jsonl"), "test": str(directory / "test.jsonl")})
    return tasks


def tiny_config(base: Path, tasks: list[dict[str, str]], out: Path, **overrides: Any) -> ExperimentConfig:
    """Every arm and both sweeps, 2 seeds x 2 learning rates, 4 steps each."""
    settings: dict[str, Any] = dict(
        base=str(base), tasks=tasks, seeds=2, lrs=[1e-3, 5e-3], max_steps=4, eval_every=2, batch_size=4,
        samples=8, k=1, scoring="letter", max_length=64, validation_size=8, eval_batch_size=8,
        arms=["scratch", "mashup_loss", "mashup_accuracy", "mashup_random", "oracle", "mashup_at_init"],
        samples_sweep=[4, 16], merge_grid={"methods": ["average", "ties"], "k": [1, 2]}, out=str(out))
    settings.update(overrides)
    return ExperimentConfig.model_validate(settings)


def comparable(records: dict[str, dict]) -> dict[str, Any]:
    """What must be identical between an uninterrupted and a resumed run: every number except seconds."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if "seconds" not in k and k not in TIMING}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return {unit: strip({"key": r["key"], "result": r["result"], "outputs": _stable_outputs(r)})
            for unit, r in records.items()}


def _stable_outputs(record: dict) -> dict[str, str]:
    """Output hashes of the files whose content is deterministic (not the timing-bearing JSON/CSV)."""
    return {path: digest for path, digest in record["outputs"].items() if path.endswith(".safetensors")}
