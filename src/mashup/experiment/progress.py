"""The experiment's progress line on stderr: units done / total, elapsed, and an ETA from the cost model."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from mashup.experiment.estimate import format_seconds


class UnitProgress:
    """A :class:`~mashup.experiment.runner.ProgressSink` for the CLI.

    The ETA is the cost model's estimate of the remaining units, rescaled by how long this session's
    computed units really took against their estimates (units found already done cost nothing).
    """

    def __init__(self, console: Console) -> None:
        self._progress = Progress(TextColumn("{task.completed}/{task.total} units"), BarColumn(bar_width=24),
                                  TextColumn("elapsed {task.fields[elapsed]}  ETA {task.fields[eta]}"),
                                  TextColumn("{task.fields[last]}"), console=console, transient=False)
        self._task: TaskID | None = None
        self._started = time.perf_counter()
        self._remaining = 0.0
        self._estimated_done = 0.0

    def __enter__(self) -> UnitProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, total: int, estimate_seconds: float) -> None:
        self._started = time.perf_counter()
        self._remaining = estimate_seconds
        self._task = self._progress.add_task("experiment", total=total, elapsed="0m00s",
                                             eta=format_seconds(estimate_seconds), last="")

    def advance(self, unit_id: str, estimate_seconds: float, status: str) -> None:
        self._remaining = max(0.0, self._remaining - estimate_seconds)
        if status == "computed":
            self._estimated_done += estimate_seconds
        elapsed = time.perf_counter() - self._started
        rate = elapsed / self._estimated_done if self._estimated_done > 0 else 1.0
        assert self._task is not None
        self._progress.update(self._task, advance=1, elapsed=format_seconds(elapsed),
                              eta=format_seconds(self._remaining * rate), last=f"{status}: {unit_id}")
