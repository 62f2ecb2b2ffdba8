"""The `mashup experiment` and `mashup report` commands: thin wrappers over mashup.experiment."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Column, Table

from mashup.cli_options import emit
from mashup.config import ExecutorName

if TYPE_CHECKING:
    from mashup.experiment.config import ExperimentConfig
    from mashup.experiment.runner import PlannedUnit

err = Console(stderr=True)


class _Options(BaseModel):
    """The options checked as `mashup select`'s are (in its SelectConfig): an unknown value exits 2 with
    "invalid value for --executor: ...", from the one list of names."""

    executor: ExecutorName


def experiment_cmd(
    config_file: Annotated[Optional[Path], typer.Argument(
        metavar="[CONFIG]", help="experiment YAML (keys: base, tasks, mode, seeds, lrs, max_steps, epochs, "
                                 "eval_every, batch_size, samples, k, merge_method, arms, scoring, out)",
        show_default=False)] = None,
    profile: Annotated[Optional[str], typer.Option(
        "--profile", help="a built-in profile instead of CONFIG: cpu-mini, paper-smollm2, paper-gemma3",
        show_default="none")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="experiment dir: new, empty, or an earlier run's "
                                                "(resumes what is recorded there)",
                                                show_default="the config's `out`")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the planned units and an estimated time; "
                                                            "run nothing")] = False,
    executor: Annotated[str, typer.Option(
        "--executor", help="where units run: local (one at a time, here) | ray (fanned out over Ray actors)")
    ] = "local",
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", help="an existing Ray cluster", show_default="none: start one locally")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable summary on stdout")] = False,
) -> None:
    """Leave-one-out Mashup vs from-scratch: seeds, a learning-rate sweep per arm chosen on validation, the
    selection baselines, Tables 3-6 and Figures 2-4. Rerun the same command to resume after a crash."""
    from mashup.experiment import load_experiment_config, load_profile

    if (config_file is None) == (profile is None):
        raise typer.BadParameter("give a CONFIG file or --profile NAME (one of them)")
    _Options(executor=executor)  # type: ignore[arg-type]
    config = load_profile(profile) if profile else load_experiment_config(config_file)  # type: ignore[arg-type]
    if out is not None:
        config = config.model_copy(update={"out": str(out)})
    if dry_run:
        _dry_run(config, as_json)
        return
    from mashup.experiment import run_experiment
    from mashup.experiment.executor import make_experiment_executor
    from mashup.experiment.progress import UnitProgress

    runner = make_experiment_executor(executor, address=ray_address)
    try:
        with UnitProgress(err) as progress:
            run = run_experiment(config, executor=runner, progress=progress)
    finally:
        getattr(runner, "close", lambda: None)()
    summary = {"out": str(run.out), "report": str(run.report), "computed": len(run.computed),
               "reused": len(run.reused), "already_done": len(run.already_done)}
    if as_json:
        emit(summary, True)
    else:
        err.print(f"{summary['computed']} units computed, {summary['reused']} reused, {summary['already_done']} "
                  f"already done; report: {run.report}")
        _print_report(run.report)


# what --dry-run says of a unit a run will not skip, by its record's status (see runner._record_statuses)
_TODO_NOTES = {"stale": "stale: runs again", "changed": "remade for an equal unit: recorded again from it",
               "waiting": "waits on earlier units", "new": ""}


def _dry_run(config: ExperimentConfig, as_json: bool) -> None:
    from mashup.experiment import plan_experiment
    from mashup.experiment.estimate import format_seconds

    planned = plan_experiment(config)
    todo = [p for p in planned if not p.recorded]
    upper = sum(p.estimate_seconds for p in todo)
    expected = sum(p.estimate_seconds for p in todo if not p.shared)
    if as_json:
        rows = [{"unit": p.unit.id, "phase": p.unit.phase, "estimate_seconds": round(p.estimate_seconds, 1),
                 "recorded": p.recorded, "status": p.status, "shared": p.shared} for p in planned]
        emit({"units": rows, "estimate_seconds": round(expected, 1),
              "estimate_seconds_if_nothing_shared": round(upper, 1)}, True)
        return
    table = Table("phase", Column("unit", overflow="fold"), "estimate", title=f"planned units for {config.out}")
    for p in planned:
        notes = [note for note in (_TODO_NOTES.get(p.status), "shared" if p.shared else "") if note]
        status = "recorded" if p.recorded else format_seconds(p.estimate_seconds) + "".join(f" ({n})" for n in notes)
        table.add_row(p.unit.phase, p.unit.id, status)
    Console().print(table)
    Console().print(f"{len(planned)} units ({sum(p.shared for p in todo)} certain to share another's job), "
                    f"{_status_counts(planned)}; estimated time for the rest, one at a time: "
                    f"{format_seconds(expected)} (shared units cost nothing; {format_seconds(upper)} if every "
                    "unit ran its own job). The cost model was measured on a 2-core CPU and scales with the "
                    "parameter count; the units a dir has finished rescale it to the hardware they ran on.")


def _status_counts(planned: list[PlannedUnit]) -> str:
    """How many units are recorded, stale, changed or waiting on earlier units (the recorded count always)."""
    counts = Counter(p.status for p in planned)
    parts = [f"{counts['recorded']} recorded"]
    if counts["stale"]:
        parts.append(f"{counts['stale']} stale (recorded for another job, or its files edited or removed since: "
                     "run again)")
    if counts["changed"]:
        parts.append(f"{counts['changed']} changed (its artifact was remade since for an equal unit: recorded again "
                     "from it)")
    if counts["waiting"]:
        parts.append(f"{counts['waiting']} recorded but built on earlier units still to do (rechecked once those "
                     "are done: redone unless they come out unchanged)")
    return ", ".join(parts)


def _print_report(report: Path | None) -> None:
    if report is not None:
        Console().print((report.parent / "report" / "table3.md").read_text())


def report_cmd(directory: Annotated[Path, typer.Argument(help="an experiment dir (the `out` of mashup experiment)")],
               partial: Annotated[bool, typer.Option(
                   "--partial", help="report an unfinished experiment: the units without a record read n/a")
               ] = False) -> None:
    """Regenerate Tables 3-6 and Figures 2-4 (markdown, CSV, PNG) from an experiment's recorded results."""
    from mashup.experiment import write_report

    report = write_report(directory, partial=partial)
    err.print(f"wrote {report} and {report.parent / 'report'}/ (tables and figures as .md, .csv, .png)")
    _print_report(report)
