"""Rich progress bars (on stderr) and the terminal's score formatting; the library itself never prints."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:  # importing mashup.training would load torch for a type: the CLI's --help stays fast
    from mashup.training import ProgressFn


def quiet_third_party() -> None:
    """Silence transformers' info logs and weight-loading bars (for the CLI and scripts, not the library).

    Through the environment variables transformers and huggingface_hub read at import, so that calling
    this does not import them (the CLI's --help stays fast); applied directly if already imported.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


@contextmanager
def started_on_first_use(make: Callable[[], Progress]) -> Iterator[Callable[[], Progress]]:
    """Yields ``progress()``, which starts the display ``make`` builds at its first call and returns it: a
    command that fails its input checks before any work prints its error line alone, with no empty bar or
    blank line before it."""
    with ExitStack() as stack:
        started: list[Progress] = []

        def progress() -> Progress:
            if not started:
                started.append(stack.enter_context(make()))
            return started[0]
        yield progress


def task_on_first_update(progress: Callable[[], Progress], description: str) -> Callable[..., None]:
    """``update(completed, total, **fields)`` of one task of ``progress()``, added (and the display started)
    at its first call."""
    task_id: TaskID | None = None

    def update(completed: int, total: int, **fields: object) -> None:
        nonlocal task_id
        if task_id is None:
            task_id = progress().add_task(description, total=total, **fields)
        progress().update(task_id, completed=completed, total=total, **fields)
    return update


@contextmanager
def training_bars(console: Console, enabled: bool = True) -> Iterator[Callable[[str], ProgressFn]]:
    """Yields ``stage(name)``, which returns the callback the training loop updates; its bar appears at the
    first update."""
    def make() -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), console=console,
                        disable=not enabled)

    with started_on_first_use(make) as progress:
        def stage(name: str) -> ProgressFn:
            update = task_on_first_update(progress, f"train {name}")
            return lambda step, total, loss: update(step, total, loss=loss)
        yield stage


@contextmanager
def scoring_bar(console: Console, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """Yields the ``progress(done, planned)`` callback selection calls as checkpoint-samples are scored."""
    def make() -> Progress:
        return Progress(TextColumn("select"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TextColumn("{task.completed}/{task.total} checkpoint-samples"), TimeElapsedColumn(),
                        console=console, disable=not enabled, transient=True)

    with started_on_first_use(make) as progress:
        yield task_on_first_update(progress, "select")


def score_cell(value: float | None, digits: int = 4) -> str:
    """A score for a table; "-" where it was not computed (accuracy of a loss-only selection)."""
    return "-" if value is None else f"{value:.{digits}f}"


def selection_summary(stats: dict) -> str:
    """One line on what a selection cost; says so when everything came from the cache."""
    if stats.get("forward_tokens", 0) == 0 and stats.get("probe_tokens", 0) == 0:
        return (f"select: all {stats.get('cached', 0)} scores came from the cache; nothing was scored "
                f"(0 forward tokens)")
    parts = [f"select ({stats['selector']}, {stats['executor']}): scored {stats['scored']}, cached {stats['cached']}"]
    if stats.get("prefiltered_out"):
        parts.append(f"{stats['prefiltered_out']} left out by the prefilter")
    cap = stats.get("token_cap")
    parts.append(f"{stats['cost_ratio']:.1%} of exhaustive forward tokens" + (f" (cap {cap:.0%})" if cap else ""))
    return "; ".join(parts)


@contextmanager
def count_bar(console: Console, description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A bar of items done out of a total (checkpoints hashed, ...); yields the ``update(done, total)`` callback.

    Shown on a terminal only: piped or captured stderr keeps just the log and error lines.
    """
    def make() -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=console, disable=not (enabled and console.is_interactive))

    with started_on_first_use(make) as progress:
        yield task_on_first_update(progress, description)
