"""Shared pieces for selection tests: records without a library, requests from a synthetic target."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

from mashup.config import DataConfig
from mashup.data.schema import sample
from mashup.data.target import load_target
from mashup.library import CheckpointRecord, inspect_checkpoint
from mashup.workspace import Workspace, open_workspace


def records_for(paths: list[Path], base: Path | None = None) -> list[CheckpointRecord]:
    records = []
    for path in paths:
        record = inspect_checkpoint(path, base=str(base) if base else None)
        record.id = record.sha256[:12]
        records.append(record)
    return records


def requests_for(base: Path, mc_file: Path, n: int, scoring: str = "letter", seed: int = 0) -> tuple[Workspace, list]:
    data = DataConfig(data=str(mc_file), scoring=scoring)
    workspace = open_workspace(str(base), data)
    target = load_target(data)
    return workspace, workspace.encode(sample(target.train, n, seed), target.template)


def wait_for_copy_writers() -> None:
    """Until the scoring copies' writer threads of engines gone by now have written what they queued and ended."""
    gc.collect()
    for thread in threading.enumerate():
        if thread.name.startswith("mashup-scoring-copies"):
            thread.join(30)
