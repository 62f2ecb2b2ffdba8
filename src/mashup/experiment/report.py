"""`mashup report DIR`: Tables 3-6 and Figures 2-4 as markdown, CSV and PNG, from an experiment's records."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path
from typing import Any

from mashup.errors import MashupError
from mashup.experiment.analysis import Records
from mashup.experiment.config import ExperimentConfig, load_experiment_config
from mashup.experiment.plan import plan_units
from mashup.experiment.sources import candidate_counts
from mashup.experiment.store import ResultStore, unit_file_name
from mashup.experiment.tables import ALL_OUTPUTS, Output
from mashup.io import write_json, write_text_atomic

logger = logging.getLogger(__name__)
CONFIG_NAME = "experiment.yaml"
REPORT_DIR = "report"
REPORT_MD = "report.md"
RESULTS_JSON = "results.json"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def render_markdown(output: Output) -> str:
    return f"## {output.title}\n\n{markdown_table(output.header, output.rows)}\n\n{output.caption}\n"


def write_csv(output: Output, path: Path) -> None:
    fields = list(dict.fromkeys(key for row in output.csv_rows for key in row)) or output.header
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in output.csv_rows)


def write_png(output: Output, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise MashupError("the report's PNG files need matplotlib, which is not installed", None,
                          "pip install 'mashup[plot]' (or matplotlib), then run `mashup report DIR`") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = output.figure.get("kind") if output.rows else None
    if kind == "lr":
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        _lr_panels(output.figure, axes)
    else:
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(output.header)), 0.9 + 0.45 * (len(output.rows) + 1)))
        if kind == "lines":
            fig.set_size_inches(6.5, 4.2)
            _lines(output.figure, ax)
        elif kind == "heatmap":
            fig.set_size_inches(1.5 + 1.3 * len(output.figure["columns"]), 1.2 + 0.6 * len(output.figure["rows"]))
            _heatmap(output.figure, ax)
        else:
            _grid(output, ax)
    fig.suptitle(output.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _grid(output: Output, ax: Any) -> None:
    ax.axis("off")
    if not output.rows:
        ax.text(0.5, 0.5, output.caption, ha="center", va="center", wrap=True, fontsize=9)
        return
    table = ax.table(cellText=output.rows, colLabels=output.header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.3)


def _lines(figure: dict[str, Any], ax: Any) -> None:
    for name, values in figure["series"].items():
        points = [(x, 100 * y) for x, y in zip(figure["x"], values) if y is not None]
        if points:
            ax.plot(*zip(*points), marker="o", linewidth=2.5 if name == "mean" else 1, label=name)
    if figure.get("logx"):
        ax.set_xscale("log", base=2)
    ax.set_xlabel(figure["xlabel"])
    ax.set_ylabel(figure["ylabel"])
    _legend(ax)


def _heatmap(figure: dict[str, Any], ax: Any) -> None:
    import numpy as np

    values = np.array([[np.nan if v is None else v for v in row] for row in figure["values"]], dtype=float)
    image = ax.imshow(values, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(figure["columns"])), figure["columns"])
    ax.set_yticks(range(len(figure["rows"])), figure["rows"])
    for (i, j), value in np.ndenumerate(values):
        dark = not np.isnan(value) and value > np.nanmean(values)  # viridis_r: high ranks are dark
        ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                color="w" if dark else "k", fontsize=8)
    ax.figure.colorbar(image, ax=ax, label="mean rank")


def _lr_panels(figure: dict[str, Any], axes: Any) -> None:
    for ax, key, label in ((axes[0], "accuracy", "test accuracy (%)"), (axes[1], "drops", "max early drop (pp)")):
        for name, values in figure[key].items():
            points = [(x, 100 * y) for x, y in zip(figure["x"], values) if y is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(label)
        _legend(ax)


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def current_records(store: ResultStore, config: ExperimentConfig) -> Records:
    """The records written (or confirmed) by a run of this exact config."""
    digest = config_digest(config)
    return {unit: r for unit, r in store.records().items() if r.get("config_digest") == digest}


def config_digest(config: ExperimentConfig) -> str:
    import hashlib

    return hashlib.sha256(config.model_dump_json(exclude={"out"}).encode()).hexdigest()[:16]


def write_report(out_dir: str | Path, config: ExperimentConfig | None = None, *, partial: bool = False,
                 candidates: dict[str, int] | None = None) -> Path:
    """Regenerate every table and figure in ``<out_dir>/report/`` and ``<out_dir>/report.md``; returns the latter.

    A planned unit whose record cannot be read is an error; planned units without a record (an unfinished
    experiment) are one too, unless ``partial``. Either way the earlier report is left as it was.
    ``candidates`` (sources per target) is the runner's, when it knows them. ``results.json`` holds each
    output's rows, ``partial``, ``missing_units`` (their ids) and ``planned_units`` (a count).
    """
    out_dir = Path(out_dir)
    if config is None:
        if not (out_dir / CONFIG_NAME).is_file():
            raise MashupError("not an experiment dir (no experiment.yaml)", str(out_dir),
                              "pass the out dir of a `mashup experiment` run")
        config = load_experiment_config(out_dir / CONFIG_NAME)
    store = ResultStore(out_dir)
    records = current_records(store, config)
    missing, planned = missing_units(store, config, records, candidates)
    if missing and not partial:
        raise MashupError(f"{len(missing)} of {planned} planned units have no record for this dir's config (an "
                          f"unfinished experiment; first: {missing[0]})", str(out_dir),
                          "rerun `mashup experiment` on this dir to finish it, or pass --partial to report what "
                          "is recorded")
    if missing:
        logger.warning("partial report: %d of %d planned units have no record (first: %s); their cells read n/a",
                       len(missing), planned, missing[0])
    report_dir = out_dir / REPORT_DIR
    report_dir.mkdir(exist_ok=True)
    outputs = [build(config, records) for build in ALL_OUTPUTS]
    sections = []
    for output in outputs:
        (report_dir / f"{output.name}.md").write_text(render_markdown(output))
        write_csv(output, report_dir / f"{output.name}.csv")
        write_png(output, report_dir / f"{output.name}.png")
        sections.append(render_markdown(output) + f"\n![{output.name}]({REPORT_DIR}/{output.name}.png)\n")
    # beside the tables: whether units are missing (their cells null), always present for a consumer to check
    write_json(out_dir / RESULTS_JSON, {**{o.name: o.csv_rows for o in outputs}, "partial": bool(missing),
                                        "missing_units": missing, "planned_units": planned})
    report = out_dir / REPORT_MD
    write_text_atomic(report, _header(config, records, len(missing), planned) + "\n" + "\n".join(sections))
    return report


def drop_report(out_dir: Path) -> None:
    """Remove a report an earlier run wrote: a rerun that does not finish must not leave it looking current."""
    for name in (REPORT_MD, RESULTS_JSON):
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / REPORT_DIR, ignore_errors=True)


def missing_units(store: ResultStore, config: ExperimentConfig, records: Records,
                  candidates: dict[str, int] | None = None) -> tuple[list[str], int]:
    """The planned units without a record for this config, and how many are planned; raises for a planned
    unit whose record file is unreadable (its results would silently read n/a)."""
    planned = [u.id for units in plan_units(config, candidates or candidate_counts(config, records=records)).values()
               for u in units]
    missing = [unit_id for unit_id in planned if unit_id not in records]
    for unit_id in missing:  # a unit in ``records`` was read already
        reason = store.unreadable(unit_id)
        if reason:
            raise MashupError(f"unreadable unit record ({reason})", str(store.units_dir / unit_file_name(unit_id)),
                              "rerun `mashup experiment` on this dir to redo that unit, then `mashup report`")
    return missing, len(planned)


def _header(config: ExperimentConfig, records: Records, missing: int, planned: int) -> str:
    seconds = [r.get("seconds", 0.0) for r in records.values() if not r.get("reused")]
    computed = len(seconds)
    budget = f"{config.max_steps} steps" if config.max_steps else f"{config.epochs:g} epoch(s)"
    return (f"# Mashup experiment: {config.base}, {config.mode}\n\n"
            f"Leave-one-out over {', '.join(t.name for t in config.tasks)}; seeds {config.seeds}; learning rates "
            f"{', '.join(f'{lr:g}' for lr in config.lrs)} per arm, chosen on a validation split carved from each "
            f"target's train data ({config.validation_size:g}); {budget} at batch {config.batch_size}; selection on "
            f"{config.samples} train examples, top {config.k}, {config.merge_method}; {config.scoring} scoring. "
            "± is the population standard deviation over seeds. "
            f"{len(records)} units recorded ({computed} computed, {sum(seconds):.0f} s of unit time; the rest "
            "were equal to another unit's job)."
            + (f" **Partial report: {missing} of {planned} planned units have no record yet.**" if missing else "")
            + "\n")
