"""Which LoRA combination initialises better: `ab` (A and B averaged separately) or `delta` (exact)?

Uses the demo's setting and cached source library: the same selected sources are merged with each
`--lora-mode`, evaluated zero-shot on the target's test split, then trained with the demo's target
settings; a from-scratch arm gives the parity reference.

    python benchmarks/lora_modes.py --modes ab delta --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path
from statistics import mean

from rich.console import Console

from mashup.config import EvalConfig, MergeConfig
from mashup.data.target import load_target
from mashup.progress import quiet_third_party
from mashup.demo import DemoSettings, build_source_library, evaluate_init, select_sources
from mashup.merging import merge_checkpoints
from mashup.run import parity
from mashup.verbs import train_in
from mashup.workspace import open_workspace


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["ab", "delta"], choices=["ab", "delta", "concat"])
    parser.add_argument("--method", default="average")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--no-train", action="store_true", help="zero-shot only")
    parser.add_argument("--json-out", type=Path, default=Path("runs/lora_modes.json"))
    return parser.parse_args()


def main() -> None:
    quiet_third_party()
    args = parse_args()
    console = Console(stderr=True)
    settings = DemoSettings(seeds=tuple(args.seeds))
    workspace = open_workspace(settings.base, settings.data(settings.target))
    library = build_source_library(settings, workspace, console)
    target = load_target(settings.data(settings.target))
    _, ranking, selected = select_sources(settings, workspace, library, target)
    test = workspace.encode(target.test, target.template)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = {} if args.no_train else {
            seed: train_in(workspace, target, settings.train(seed), EvalConfig(), _mkdir(Path(tmp, f"scratch{seed}")))
            .result for seed in args.seeds}
        for mode in args.modes:
            report = merge_checkpoints(selected, MergeConfig(method=args.method, lora_mode=mode), Path(tmp, mode))
            (initial,) = evaluate_init(workspace, [test], Path(tmp, mode))
            row = {"zero_shot": initial.accuracy, "zero_shot_loss": initial.loss,
                   "svd_relative_error": report.svd_relative_error}
            for seed, reference in scratch.items():
                arm = train_in(workspace, target, settings.train(seed), EvalConfig(), _mkdir(Path(tmp, f"{mode}{seed}")),
                               Path(tmp, mode), initial=initial).result
                row.setdefault("final", []).append(arm.final.accuracy)
                row.setdefault("parity_p100", []).append(parity(arm, reference)["p100"]["fraction_of_steps"])
            results[mode] = row
    print(f"selected: {[r.task for r in selected]} (ranking by loss: {[round(s.loss, 4) for s in ranking]})")
    print(f"{'mode':<8}{'zero-shot':>10}{'zs loss':>9}{'final (mean)':>14}{'parity100 per seed':>22}")
    for mode, row in results.items():
        final = f"{mean(row['final']):.3f}" if "final" in row else "-"
        print(f"{mode:<8}{row['zero_shot']:>10.3f}{row['zero_shot_loss']:>9.4f}{final:>14}{str(row.get('parity_p100', '-')):>22}")
    if scratch:
        print(f"scratch final (mean over seeds): {mean(r.final.accuracy for r in scratch.values()):.3f}")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps({"settings": replace(settings).__dict__ | {"modes": args.modes},
                                         "selected": [r.id for r in selected], "results": results}, indent=2,
                                        default=str) + "\n")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


if __name__ == "__main__":
    main()
