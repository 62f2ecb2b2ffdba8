"""Tables 3-6 and the data of Figures 2-4, built from recorded units (each a markdown grid and CSV rows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from mashup.experiment.analysis import (Cell, Records, accuracy_cell, average_ranks, chosen_runs, convergence,
                                        oracle_arms, sweep_cell, train_runs)
from mashup.experiment.config import ExperimentConfig

ARM_NAMES = {"scratch": "From scratch", "mashup_at_init": "Mashup at init", "mashup_loss": "Mashup Learning",
             "mashup_accuracy": "Mashup (by accuracy)", "mashup_random": "Mashup (random)",
             "oracle": "Mashup (oracle)"}
SELECTION_NAMES = {"scratch": "From scratch (no selection)", "mashup_random": "Random",
                   "mashup_accuracy": "By accuracy", "mashup_loss": "By loss", "oracle": "Oracle"}
MISSING, NEVER = "n/a", "—"


@dataclass
class Output:
    """One table or figure: a markdown grid, tidy CSV rows, and what its PNG shows."""

    name: str
    title: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    csv_rows: list[dict[str, Any]]
    figure: dict[str, Any] = field(default_factory=dict)  # plot kind and its series; empty: render the grid


def _pct(value: float | None, digits: int = 1) -> str:
    return MISSING if value is None else f"{100 * value:.{digits}f}"


def _cell_text(cell: Cell, seeds: int) -> str:
    if cell.mean is None:
        return MISSING
    text = _pct(cell.mean) if cell.n == 1 and seeds == 1 else f"{_pct(cell.mean)} ± {_pct(cell.std)}"
    return text if cell.n >= seeds else f"{text} ({cell.n}/{seeds} seeds)"


def _average(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else mean(values)  # type: ignore[arg-type]


def _accuracy_table(name: str, title: str, caption: str, arms: list[str], names: dict[str, str],
                    config: ExperimentConfig, records: Records) -> Output:
    tasks = [t.name for t in config.tasks]
    rows, csv_rows = [], []
    for arm in arms:
        seeds = 1 if arm == "mashup_at_init" else len(config.seeds)
        cells = [accuracy_cell(records, task, arm) for task in tasks]
        average = _average([c.mean for c in cells])
        rows.append([names[arm], *[_cell_text(c, seeds) for c in cells], _pct(average)])
        for task, cell in zip(tasks, cells):
            chosen = chosen_runs(records, task, arm, oracle_arms(records, task)) if arm != "mashup_at_init" else None
            csv_rows.append({"arm": arm, "task": task, "mean": cell.mean, "std": cell.std, "seeds": cell.n,
                             "lr": chosen[1] if chosen else None,
                             "setting": chosen[0] if chosen and arm == "oracle" else None})
    return Output(name, title, caption, ["Method", *tasks, "Avg."], rows, csv_rows)


def table3(config: ExperimentConfig, records: Records) -> Output:
    arms = [a for a in ("scratch", "mashup_at_init", "mashup_loss") if a in config.arms]
    at_init = " Mashup at init: the merged init, untrained." if "mashup_at_init" in arms else ""
    return _accuracy_table(
        "table3", "Table 3: accuracy (%) per task, leave-one-out",
        f"Test accuracy, mean ± std over {len(config.seeds)} seeds, each arm at its learning rate chosen on the "
        f"validation split carved from the target's train data.{at_init}",
        arms, ARM_NAMES, config, records)


# Table 6's caption describes each selection row present
_SELECTIONS = {"mashup_random": "{k} checkpoint(s) at random",
               "mashup_accuracy": "the top-{k} by accuracy on {samples} train examples",
               "mashup_loss": "the top-{k} by loss on {samples} train examples",
               "oracle": "the best on the validation split of all merges of {k} candidates"}


def table6(config: ExperimentConfig, records: Records) -> Output:
    arms = [a for a in ("scratch", "mashup_random", "mashup_accuracy", "mashup_loss", "oracle") if a in config.arms]
    rows = [f"{SELECTION_NAMES[a]}: {_SELECTIONS[a].format(k=config.k, samples=config.samples)}"
            for a in arms if a in _SELECTIONS]
    caption = (f"{'; '.join(rows)}; each merged with {config.merge_method} and trained at its best validation LR. "
               if rows else "") + "Mean ± std over seeds."
    return _accuracy_table("table6", "Table 6: checkpoint selection methods compared (accuracy %)", caption, arms,
                           SELECTION_NAMES, config, records)


def table4(config: ExperimentConfig, records: Records) -> Output:
    tasks = [t.name for t in config.tasks]
    rows, csv_rows = [], []
    for threshold in ("p99", "p100"):
        for arm in ("scratch", "mashup_loss"):
            if arm not in config.arms:
                continue
            results = [convergence(records, task, arm, config.samples) for task in tasks]
            shares = [None if r is None else getattr(r, threshold) for r in results]
            texts = [MISSING if r is None else (NEVER if s is None else _pct(s)) for r, s in zip(results, shares)]
            label = f"{ARM_NAMES[arm]} ({threshold[1:]}%)"
            rows.append([label, *texts, _pct(_average(shares)) if None not in shares else NEVER])
            csv_rows += [{"arm": arm, "threshold": int(threshold[1:]), "task": task,
                          "fraction_of_steps": share, "seeds": r.seeds if r else 0}
                         for task, r, share in zip(tasks, results, shares)]
    return Output("table4", "Table 4: % of training steps to reach the converged from-scratch accuracy",
                  "Share of the steps at which each arm first reaches 99% (the paper's threshold; 100% below it) of "
                  "the final from-scratch accuracy of the same seed, both at their best validation LR; mean over "
                  f"seeds; {NEVER} when any seed never does. Step 0 is the init.",
                  ["Method", *tasks, "Avg."], rows, csv_rows)


def table5(config: ExperimentConfig, records: Records) -> Output:
    tasks = [t.name for t in config.tasks]
    results = [convergence(records, task, "mashup_loss", config.samples) for task in tasks]
    scratch = [r.scratch_seconds if r else None for r in results]
    mashup_s = [r.seconds_p99 if r else None for r in results]
    ratios = [m / s if m is not None and s else None for m, s in zip(mashup_s, scratch)]

    def fmt(values: list[float | None], ratio: bool = False) -> list[str]:
        texts = [MISSING if r is None else NEVER if v is None else (f"{100 * v:.0f}%" if ratio else f"{v:.1f}")
                 for r, v in zip(results, values)]
        average = _average(values)
        return [*texts, NEVER if average is None else (f"{100 * average:.0f}%" if ratio else f"{average:.1f}")]

    rows = [["From scratch (s)", *fmt(scratch)], ["Mashup (s)", *fmt(mashup_s)], ["Ratio (%)", *fmt(ratios, True)]]
    csv_rows = [{"task": t, "scratch_seconds": s, "mashup_seconds": m, "ratio": r}
                for t, s, m, r in zip(tasks, scratch, mashup_s, ratios)]
    return Output("table5", "Table 5: wall-clock training time (s), selection and merge included",
                  "From scratch: training seconds of the whole run at its best LR (evaluation excluded). Mashup: "
                  "uncached selection + merge + training seconds until 99% of the from-scratch accuracy; mean over "
                  f"seeds; {NEVER} when any seed never reaches it.", ["", *tasks, "Avg."], rows, csv_rows)


def lr_table(config: ExperimentConfig, records: Records) -> Output:
    tasks = [t.name for t in config.tasks]
    rows, csv_rows = [], []
    for arm in (a for a in config.arms if a != "mashup_at_init"):
        chosen = [chosen_runs(records, task, arm, oracle_arms(records, task)) for task in tasks]
        rows.append([ARM_NAMES[arm], *[MISSING if c is None else f"{c[1]:g}" for c in chosen]])
        csv_rows += [{"arm": arm, "task": t, "lr": c[1] if c else None, "setting": c[0] if c else None}
                     for t, c in zip(tasks, chosen)]
    return Output("learning_rates", "Selected learning rates (chosen on the validation split)",
                  f"Best mean validation accuracy over seeds among {', '.join(f'{lr:g}' for lr in config.lrs)}.",
                  ["Method", *tasks], rows, csv_rows)


def figure2(config: ExperimentConfig, records: Records) -> Output:
    tasks = [t.name for t in config.tasks]
    samples = config.sweep_samples()
    rows, csv_rows, series = [], [], {}
    for task in tasks:
        cells = [_sample_point(config, records, task, n) for n in samples]
        rows.append([task, *[_cell_text(c, len(config.seeds)) for c in cells]])
        series[task] = [c.mean for c in cells]
        csv_rows += [{"task": task, "samples": n, "mean": c.mean, "std": c.std, "seeds": c.n}
                     for n, c in zip(samples, cells)]
    series["mean"] = [_average([series[t][i] for t in tasks]) for i in range(len(samples))]
    rows.append(["Avg.", *[_pct(v) for v in series["mean"]]])
    return Output("figure2", "Figure 2: accuracy (%) against the number of selection samples",
                  f"Mashup (selection by loss, top-{config.k}, {config.merge_method}) trained at the Mashup arm's best "
                  "validation LR, for each number of train examples scored per checkpoint.",
                  ["Task", *[str(n) for n in samples]], rows, csv_rows,
                  {"kind": "lines", "x": samples, "series": series, "xlabel": "selection samples (log scale)",
                   "ylabel": "test accuracy (%)", "logx": True})


def _sample_point(config: ExperimentConfig, records: Records, task: str, n: int) -> Cell:
    if n != config.samples:
        return sweep_cell(records, task, f"samples:{n}")
    return accuracy_cell(records, task, "mashup_loss")


def figure3(config: ExperimentConfig, records: Records) -> Output:
    points = config.grid_points()
    tasks = [t.name for t in config.tasks]
    ranks: dict[str, list[float]] = {f"{m}:{k}": [] for m, k in points}
    for task in tasks:
        means = {f"{m}:{k}": sweep_cell(records, task, f"grid:{m}:{k}").mean for m, k in points}
        if all(v is not None for v in means.values()):
            for name, r in average_ranks(means).items():  # type: ignore[arg-type]
                ranks[name].append(r)
    if not points:
        return Output("figure3", "Figure 3: mean rank of each merge method × k (1 = best)",
                      "Not run: the merge-method × k grid is opt-in (set `merge_grid` in the config).",
                      ["Method"], [], [])
    methods = list(dict.fromkeys(m for m, _ in points))
    ks = list(dict.fromkeys(k for _, k in points))
    mean_rank = {name: mean(values) if values else None for name, values in ranks.items()}
    rows = [[m, *[MISSING if mean_rank.get(f"{m}:{k}") is None else f"{mean_rank[f'{m}:{k}']:.2f}" for k in ks]]
            for m in methods]
    csv_rows = [{"method": m, "k": k, "mean_rank": mean_rank.get(f"{m}:{k}"), "tasks": len(ranks[f"{m}:{k}"])}
                for m, k in points]
    return Output("figure3", "Figure 3: mean rank of each merge method × k (1 = best)",
                  "Per task, the merges of the top-k checkpoints by loss are ranked by test accuracy (mean over seeds, "
                  "trained at the Mashup arm's best validation LR); ranks are averaged over tasks.",
                  ["Method", *[f"k={k}" for k in ks]], rows, csv_rows,
                  {"kind": "heatmap", "rows": methods, "columns": [f"k={k}" for k in ks],
                   "values": [[mean_rank.get(f"{m}:{k}") for k in ks] for m in methods]})


def figure4(config: ExperimentConfig, records: Records) -> Output:
    tasks = [t.name for t in config.tasks]
    arms = [a for a in ("scratch", "mashup_loss", "mashup_accuracy", "mashup_random") if a in config.arms]
    rows, csv_rows, accuracy, drops = [], [], {}, {}
    for arm in arms:
        name = ARM_NAMES[arm]
        accuracy[name], drops[name] = [], []
        for lr in config.lrs:
            per_task = {task: train_runs(records, task, arm).get(lr, []) for task in tasks}
            runs = [run for task_runs in per_task.values() for run in task_runs]
            task_means = [mean(r.test for r in task_runs) if task_runs else None for task_runs in per_task.values()]
            row = {"arm": arm, "lr": lr, "mean_accuracy": _average(task_means), "runs": len(runs),
                   "mean_early_drop": mean(r.early_drop for r in runs) if runs else None,
                   "max_early_drop": max((r.early_drop for r in runs), default=None)}
            accuracy[name].append(row["mean_accuracy"])
            drops[name].append(row["max_early_drop"])
            csv_rows.append(row)
            rows.append([name, f"{lr:g}", _pct(row["mean_accuracy"]), _pct(row["mean_early_drop"]),
                         _pct(row["max_early_drop"])])
    return Output("figure4", "Figure 4: learning-rate sensitivity",
                  "Test accuracy averaged over tasks (mean over seeds per task) at each learning rate, and the "
                  "largest early drop of each curve below its own init (first half of training): a merged init "
                  "that collapses at once signals a learning rate too high for it.",
                  ["Method", "LR", "accuracy (%)", "mean early drop (pp)", "max early drop (pp)"], rows, csv_rows,
                  {"kind": "lr", "x": config.lrs, "accuracy": accuracy, "drops": drops})


ALL_OUTPUTS = (table3, table4, table5, table6, lr_table, figure2, figure3, figure4)
