"""The eval table (markdown) and the who-wrote-which-segment figure."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)
PLOTTED = ("random", "switcher-untrained", "switcher-trained")


def markdown_table(result: dict) -> str:
    names = result["candidates"]
    header = ("| system | accuracy | 95% CI | mean reward | tokens run / response token | s / response token | "
              f"segments by {' / '.join(names)} |")
    lines = [f"Task `{result['task']}`, {result['n']} test questions.", "", header,
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        low, high = row["ci95"]
        share = " / ".join(f"{100 * s:.0f}%" for s in row["segment_share"]) if row["segment_share"] else "-"
        lines.append(f"| {row['system']} | {row['accuracy']:.3f} | [{low:.3f}, {high:.3f}] | {row['mean_reward']:.3f} "
                     f"| {row['forwarded_per_token']:.2f} | {row['seconds_per_token']:.4f} | {share} |")
    for name, reason in result.get("skipped", {}).items():
        lines.append(f"| {name} | – | – | – | – | – | skipped: {reason} |")
    if result.get("cost"):
        lines += ["", "Cost against single-model generation (mean of the `alone` rows), per response token:", ""]
        lines += [f"- {name}: {c['tokens']:.2f}x tokens run ({c['tokens_without_caches']:.2f}x without per-candidate "
                  f"caches), {c['seconds']:.2f}x seconds" for name, c in result["cost"].items()]
    return "\n".join(lines) + "\n"


def plot_writers(result: dict, path: Path, examples: int, systems: Sequence[str] = PLOTTED) -> Path | None:
    """One horizontal bar per (system, example): segments coloured by writer, widths in tokens."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'mashup[plot]'); no writer plot")
        return None
    shown = [s for s in systems if s in result["traces"]]
    if not shown or examples == 0:
        return None
    names = result["candidates"]
    colours = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 0.45 * examples * len(shown) + 1.2), squeeze=False)
    for axis, system in zip(axes[:, 0], shown):
        for row, trace in enumerate(result["traces"][system][:examples]):
            left = 0
            for segment in trace["segments"]:
                axis.barh(row, segment["tokens"], left=left, color=colours[segment["writer"] % 10],
                          edgecolor="white")
                left += segment["tokens"]
        axis.set_yticks(range(min(examples, len(result["traces"][system]))))
        axis.set_yticklabels([f"q{i}" for i in range(min(examples, len(result["traces"][system])))])
        axis.invert_yaxis()
        axis.set_title(system, fontsize=9)
        axis.set_xlabel("response tokens")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[i % 10]) for i in range(len(names))]
    fig.legend(handles, names, loc="upper right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
