"""Tiny leave-one-out experiments: three file tasks on the tiny model, budgets of a few steps."""

from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import Any

import pytest

from mashup.experiment import ExperimentConfig, manifest
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


def track_reads(monkeypatch: pytest.MonkeyPatch, directory: Path) -> list[Path]:
    """The files under ``directory`` hashed from now on: given to the manifest's hashing function, or opened for
    binary reading some other way (``Path.read_bytes`` and ``Path.open`` do not go through ``open``: the
    hashing function is tracked so that a file read by it is seen however it opens the file)."""
    reads: list[Path] = []
    real = builtins.open
    real_hash = manifest.sha256_file
    hashing_now: list[Path] = []  # the file being hashed: its own open is not counted twice

    def hashing(path: Path) -> str:
        if Path(directory) in Path(path).parents:
            reads.append(Path(path))
        hashing_now.append(Path(path))
        try:
            return real_hash(path)
        finally:
            hashing_now.pop()

    def tracking(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, os.PathLike)) and "rb" in mode and Path(directory) in Path(file).parents \
                and Path(file) not in hashing_now:
            reads.append(Path(file))
        return real(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", tracking)
    monkeypatch.setattr(manifest, "sha256_file", hashing)
    return reads


def flip_bits(weights_dir: Path, bit: int) -> None:
    """Change the lowest bits of the last value of each weight file (still finite): other bytes, as a GPU gives."""
    for path in weights_dir.glob("*.safetensors"):
        data = bytearray(path.read_bytes())
        data[-4] ^= bit
        path.write_bytes(bytes(data))
