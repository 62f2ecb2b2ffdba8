"""The experiment's progress on stderr: units done / total, elapsed, and an ETA from the cost model.

On a terminal it is one live line; elsewhere (a file, a pipe, nohup) one plain line per finished unit, so
a log shows how far a long run got while it runs.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from mashup.experiment.estimate import format_seconds

_WORDS = {"done": "already done", "reused": "reused", "computed": "computed"}


class UnitProgress:
    """A :class:`~mashup.experiment.runner.ProgressSink` for the CLI.

    The ETA is the cost model's estimate of the remaining units, rescaled by how long this session's
    computed units really took against their estimates (units found already done cost nothing).
    """

    def __init__(self, console: Console) -> None:
        self._console = console
        self._live = console.is_interactive  # a terminal that redraws (not TERM=dumb: Emacs, some CI logs)
        self._progress = Progress(TextColumn("{task.completed}/{task.total} units"), BarColumn(bar_width=24),
                                  TextColumn("elapsed {task.fields[elapsed]}  ETA {task.fields[eta]}"),
                                  TextColumn("{task.fields[last]}"), console=console, transient=False,
                                  disable=not self._live)
        self._task: TaskID | None = None
        self._started = time.perf_counter()
        self._remaining = 0.0
        self._estimated_done = 0.0
        self._total = self._done = 0

    def __enter__(self) -> UnitProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, total: int, estimate_seconds: float) -> None:
        self._started = time.perf_counter()
        self._remaining = estimate_seconds
        self._total, self._done = total, 0
        self._task = self._progress.add_task("experiment", total=total, elapsed="0m00s",
                                             eta=format_seconds(estimate_seconds), last="")
        self._line(f"[0/{total}] {total} units planned (ETA {format_seconds(estimate_seconds)}, one at a time)")

    def advance(self, unit_id: str, estimate_seconds: float, status: str, seconds: float | None = None) -> None:
        self._remaining = max(0.0, self._remaining - estimate_seconds)
        if status == "computed":
            self._estimated_done += estimate_seconds
        self._done += 1
        elapsed = time.perf_counter() - self._started
        rate = elapsed / self._estimated_done if self._estimated_done > 0 else 1.0
        eta = format_seconds(self._remaining * rate)
        assert self._task is not None
        self._progress.update(self._task, advance=1, elapsed=format_seconds(elapsed), eta=eta,
                              last=f"{_WORDS.get(status, status)}: {unit_id}")
        took = f"{seconds:.1f} s; " if status == "computed" and seconds is not None else ""
        self._line(f"[{self._done}/{self._total}] {_WORDS.get(status, status)} {unit_id} "
                   f"({took}elapsed {format_seconds(elapsed)}, ETA {eta})")

    def _line(self, text: str) -> None:
        """Off a terminal: the line as it is (no markup, colour, wrapping or cropping), at once."""
        if not self._live:
            self._console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)
            self._console.file.flush()
