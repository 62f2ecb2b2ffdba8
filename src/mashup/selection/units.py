"""Scoring as executor units: a picklable engine factory and the unit it runs (records x request range)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mashup.data.prompts import EncodedRequest
from mashup.evaluation import ScoreSettings
from mashup.library import CheckpointRecord
from mashup.models import default_device
from mashup.selection.engine import ScoringEngine
from mashup.selection.example_scores import ExampleScores


@dataclass(frozen=True)
class ScoreUnit:
    records: tuple[CheckpointRecord, ...]
    indices: tuple[int, ...]


@dataclass(frozen=True)
class EngineFactory:
    """Builds one ``ScoringEngine`` per worker; the device is the worker's own unless given."""

    base_dir: Path
    requests: tuple[EncodedRequest, ...]
    batch_size: int
    pad_id: int
    device: str | None = None
    bf16: bool = False  # the driver's resolved precision, so remote workers score like local ones
    adapters_per_forward: int | None = None
    allow_pickle: bool = False
    with_accuracy: bool = True  # False: loss only (cloze requests score the gold continuation alone)
    read_ahead: bool | None = None  # read the next adapters' files on threads while forwards run (None: on CUDA)
    copies_dir: Path | None = None  # where reading ahead keeps bf16 copies of float32 adapters (scoring_copies)

    def settings(self) -> ScoreSettings:
        import torch

        device = torch.device(self.device) if self.device else default_device()
        return ScoreSettings(batch_size=self.batch_size, device=device, bf16=self.bf16, pad_id=self.pad_id)

    def __call__(self) -> EngineWorker:
        return EngineWorker(ScoringEngine(self.base_dir, self.requests, self.settings(),
                                          adapters_per_forward=self.adapters_per_forward,
                                          allow_pickle=self.allow_pickle, with_accuracy=self.with_accuracy,
                                          read_ahead=self.read_ahead, copies_dir=self.copies_dir))


@dataclass(frozen=True)
class EngineWorker:
    """Scores units with one engine; ``prefetch`` lets it read a unit's adapters while it scores another."""

    engine: ScoringEngine

    def __call__(self, unit: ScoreUnit) -> list[ExampleScores]:
        return self.engine.score(unit.records, unit.indices)

    def prefetch(self, unit: ScoreUnit) -> None:
        self.engine.prefetch(unit.records, unit.indices)
