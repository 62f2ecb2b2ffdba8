"""The demo's outputs: console tables, a PNG plot of accuracy against step, and a markdown report."""

from __future__ import annotations

from pathlib import Path
from statistics import mean
from typing import Any

from rich.console import Console
from rich.table import Table

from mashup.progress import score_cell


def mean_curves(summary: dict[str, Any], arm: str) -> list[tuple[int, float]]:
    """Accuracy per evaluated step, averaged over seeds."""
    curves = [s[arm]["curve"] for s in summary["seeds"]]
    return [(points[0]["step"], mean(c[i]["accuracy"] for c in curves)) for i, points in enumerate(zip(*curves))]


def mean_parity_fraction(summary: dict[str, Any], key: str = "p100") -> float | None:
    """Mean fraction of steps to parity over seeds; None when any seed never reached it."""
    fractions = [s["parity"][key]["fraction_of_steps"] for s in summary["seeds"]]
    return None if any(f is None for f in fractions) else mean(fractions)


ZERO_SHOT_HEADER = ("checkpoint", "sample loss", "sample accuracy", "test accuracy")


def _zero_shot_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    """Loss and accuracy on the selection sample (target train split); test accuracy for the inits."""
    zero = summary["zero_shot"]
    rows = [("base model", f"{zero['base_sample']['loss']:.4f}", f"{zero['base_sample']['accuracy']:.3f}",
             f"{zero['base']:.3f}")]
    for score in zero["ranking"]:
        mark = " (selected)" if score["id"] in zero["selected"] else ""
        rows.append((f"source {zero['tasks'][score['id']]}{mark}", f"{score['loss']:.4f}",
                     score_cell(score["accuracy"], 3), "-"))
    rows.append((f"merged init (average of top {len(zero['selected'])})", f"{zero['merged_sample']['loss']:.4f}",
                 f"{zero['merged_sample']['accuracy']:.3f}", f"{zero['merged']:.3f}"))
    return rows


def _parity_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for s in summary["seeds"]:
        p = s["parity"]
        rows.append((str(s["seed"]), f"{s['scratch']['curve'][-1]['accuracy']:.3f}",
                     f"{s['mashup']['curve'][-1]['accuracy']:.3f}", str(p["p99"]["step"]), str(p["p100"]["step"]),
                     _pct(p["p100"]["fraction_of_steps"])))
    return rows


def _pct(value: float | None) -> str:
    return "never" if value is None else f"{100 * value:.0f}%"


def print_tables(summary: dict[str, Any], console: Console) -> None:
    settings = summary["settings"]
    table = Table(*ZERO_SHOT_HEADER, title=f"Zero-shot on {summary['target']}: selection sample of "
                  f"{settings['select_samples']} train questions, {summary['n_test']} test questions")
    for row in _zero_shot_rows(summary):
        table.add_row(*row)
    console.print(table)
    curves = Table("step", "mashup accuracy", "scratch accuracy", title="Accuracy curves (mean over seeds)")
    for (step, m), (_, s) in zip(mean_curves(summary, "mashup"), mean_curves(summary, "scratch")):
        curves.add_row(str(step), f"{m:.3f}", f"{s:.3f}")
    console.print(curves)
    parity = Table("seed", "scratch final", "mashup final", "mashup step at 99%", "at 100%", "fraction of steps",
                   title="Steps to reach the from-scratch final accuracy")
    for row in _parity_rows(summary):
        parity.add_row(*row)
    console.print(parity)
    console.print(f"mean fraction of steps to parity: {_pct(mean_parity_fraction(summary))}")
    times = Table("stage", "seconds", title="Time")
    for name, seconds in summary["seconds"].items():
        times.add_row(name, f"{seconds:.1f}")
    console.print(times)


def write_plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, colour in (("mashup", "tab:blue"), ("scratch", "tab:orange")):
        for s in summary["seeds"]:
            curve = s[arm]["curve"]
            ax.plot([p["step"] for p in curve], [p["accuracy"] for p in curve], color=colour, alpha=0.3)
        mean_curve = mean_curves(summary, arm)
        ax.plot([p[0] for p in mean_curve], [p[1] for p in mean_curve], color=colour, marker="o", label=arm)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"accuracy on {summary['target']} test")
    ax.set_title("Mashup vs from-scratch (thin: single seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def write_report(summary: dict[str, Any], path: Path) -> None:
    settings = summary["settings"]
    fraction = mean_parity_fraction(summary)
    curve_rows = [(str(st), f"{m:.3f}", f"{s:.3f}") for (st, m), (_, s) in
                  zip(mean_curves(summary, "mashup"), mean_curves(summary, "scratch"))]
    verdict = ("Mashup reached the from-scratch final accuracy in " + _pct(fraction) + " of the steps on average "
               "(target: at most 60%)." if fraction is not None else
               "Mashup did not reach the from-scratch final accuracy on every seed within the budget.")
    text = f"""# Mashup demo: {summary['target']}

Base `{settings['base']}`, {settings['scoring']} scoring, LoRA r=8 alpha=16, batch {settings['batch_size']},
{settings['steps']} steps at lr {settings['lr']} (cosine, 10% warmup) for both arms, seeds {settings['seeds']};
the arms differ only in their initialisation (merged sources vs a fresh LoRA).
Target data: {summary['target_source']} ({summary['n_train']} train, {summary['n_test']} test questions).
Source library: {', '.join(settings['sources'])} ({settings['source_steps']} steps each at batch
{settings['source_batch_size']}); top {settings['k']} by answer loss averaged (LoRA A and B separately).

## Zero-shot

Loss and accuracy on the selection sample ({settings['select_samples']} questions of the target's train split,
ranked by loss), and accuracy on the test split for the base and the merged init (both arms' step 0).
Selection by loss scores each source on the correct answer only, so it has no accuracy for them ("-").

{_md_table(ZERO_SHOT_HEADER, _zero_shot_rows(summary))}

## Accuracy curves (mean over seeds)

{_md_table(("step", "mashup", "scratch"), curve_rows)}

![accuracy](accuracy.png)

## Steps to parity

{_md_table(("seed", "scratch final", "mashup final", "step at 99%", "step at 100%", "fraction"), _parity_rows(summary))}

{verdict}

## Time (seconds)

The arms' times hold training and their held-out evaluations, over all seeds; the source library
is trained once and reused from the cache afterwards.

{_md_table(("stage", "seconds"), [(k, f"{v:.1f}") for k, v in summary['seconds'].items()])}
"""
    path.write_text(text)
