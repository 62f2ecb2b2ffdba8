"""Which LoRA combination initialises better: `ab` (A and B averaged separately), `delta` (exact) or `concat`?

Uses the demo's setting and cached source library: the demo's selection (the `select` verb with the demo's
SelectConfig, among the sources every compared mode can merge) picks the sources once; they are merged with
each `--lora-mode`, evaluated zero-shot on the target's test split, then trained with the demo's target
settings; a from-scratch arm per seed gives the parity reference.

    python benchmarks/lora_modes.py --modes ab delta --seeds 0 1
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict
from pathlib import Path
from statistics import mean
from typing import Any

from rich.console import Console

from mashup.candidates import find_mergeable_candidates
from mashup.config import MergeConfig, RunConfig
from mashup.data.prompts import EncodedRequest
from mashup.data.target import TargetData, load_target
from mashup.demo import DemoSettings, build_source_library
from mashup.evaluation import EvalResult, evaluate
from mashup.io import write_json
from mashup.library import Library
from mashup.library.identity import base_identity
from mashup.merging import merge_checkpoints
from mashup.progress import quiet_third_party
from mashup.run import parity
from mashup.training import TrainResult
from mashup.verbs import SelectResult, eval_split, load_eval_model, merge_statistics_batches, select, train_in
from mashup.workspace import Workspace, open_workspace


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["ab", "delta"], choices=["ab", "delta", "concat"])
    parser.add_argument("--method", default="average")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--no-train", action="store_true", help="zero-shot only")
    parser.add_argument("--json-out", type=Path, default=Path("runs/lora_modes.json"))
    return parser.parse_args(argv)


def select_sources(demo: RunConfig, workspace: Workspace, target: TargetData,
                   merges: list[MergeConfig]) -> SelectResult:
    """The demo's selection, ranked once among the sources that every compared merge accepts (as an experiment
    ranks once for several merges), so that each mode merges the same sources."""
    library = Library(demo.library)
    usable = find_mergeable_candidates(library, demo.base, demo.train.mode, target, merges,
                                       base_id=base_identity(workspace.base_dir))
    return select(demo.base, demo.data, demo.select, library.directory, kind=demo.train.mode, merge=merges[0],
                  workspace=workspace, target=target, among=[r.id for r in usable.records])


def zero_shot(workspace: Workspace, adapter: Path, requests: list[EncodedRequest], batch_size: int) -> EvalResult:
    """The merged init on the arms' eval requests: their step 0, so training reuses it (``initial``)."""
    return evaluate(load_eval_model(workspace, adapter=adapter), requests, workspace.settings(batch_size))


def train_arm(workspace: Workspace, target: TargetData, settings: DemoSettings, demo: RunConfig, seed: int,
              out: Path, init: Path | None = None, initial: EvalResult | None = None) -> TrainResult:
    """One arm on the target with the demo's target settings; only ``init`` differs between arms."""
    out.mkdir(parents=True)
    return train_in(workspace, target, settings.train(seed), demo.eval, out, init, initial=initial,
                    final_dir=out).result


def compare_mode(workspace: Workspace, target: TargetData, settings: DemoSettings, demo: RunConfig,
                 merge: MergeConfig, selection: SelectResult, scratch: dict[int, TrainResult],
                 tmp: Path) -> dict[str, Any]:
    """Merge the selected sources under one mode, evaluate the merge zero-shot, train from it per seed."""
    library = Library(demo.library)
    merged = tmp / f"merged-{merge.lora_mode}"
    report = merge_checkpoints([library.get(i) for i in selection.selected], merge, merged,
                               base_model_dir=workspace.base_dir,
                               calibration_batches=merge_statistics_batches(merge, workspace, target))
    requests = workspace.encode(eval_split(target, demo.eval), target.template)
    initial = zero_shot(workspace, merged, requests, demo.eval.batch_size)
    row: dict[str, Any] = {"zero_shot": initial.accuracy, "zero_shot_loss": initial.loss,
                           "svd_relative_error": report.svd_relative_error}
    for seed, reference in scratch.items():
        arm = train_arm(workspace, target, settings, demo, seed, tmp / f"{merge.lora_mode}{seed}", merged, initial)
        row.setdefault("final", []).append(arm.final.accuracy)
        row.setdefault("parity_p100", []).append(parity(arm, reference)["p100"]["fraction_of_steps"])
    return row


def print_results(selection: SelectResult, results: dict[str, dict[str, Any]], scratch: dict[int, TrainResult]
                  ) -> None:
    tasks = [next(s.task for s in selection.ranking if s.id == i) for i in selection.selected]
    print(f"selected: {tasks} (ranking by loss: {[round(s.loss, 4) for s in selection.ranking]})")
    print(f"{'mode':<8}{'zero-shot':>10}{'zs loss':>9}{'final (mean)':>14}{'parity100 per seed':>22}")
    for mode, row in results.items():
        final = f"{mean(row['final']):.3f}" if "final" in row else "-"
        parity_p100 = str(row.get("parity_p100", "-"))
        print(f"{mode:<8}{row['zero_shot']:>10.3f}{row['zero_shot_loss']:>9.4f}{final:>14}{parity_p100:>22}")
    if scratch:
        print(f"scratch final (mean over seeds): {mean(r.final.accuracy for r in scratch.values()):.3f}")


def main(argv: list[str] | None = None) -> None:
    quiet_third_party()
    args = parse_args(argv)
    settings = DemoSettings(seeds=tuple(args.seeds))
    workspace = open_workspace(settings.base, settings.data(settings.target))
    library = build_source_library(settings, workspace, Console(stderr=True))
    target = load_target(settings.data(settings.target))
    with tempfile.TemporaryDirectory() as tmp:
        # the demo's own run config: its selection, merge, train and eval settings (nothing is written to out)
        demo = settings.run_config(args.seeds[0], library.directory, Path(tmp, "run"), workspace.precision)
        merges = {mode: demo.merge.model_copy(update={"method": args.method, "lora_mode": mode}) for mode in args.modes}
        selection = select_sources(demo, workspace, target, list(merges.values()))
        scratch = {} if args.no_train else {seed: train_arm(workspace, target, settings, demo, seed,
                                                            Path(tmp, f"scratch{seed}")) for seed in args.seeds}
        results = {mode: compare_mode(workspace, target, settings, demo, merge, selection, scratch, Path(tmp))
                   for mode, merge in merges.items()}
    print_results(selection, results, scratch)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json_out, {"settings": asdict(settings) | {"modes": args.modes, "method": args.method},
                               "selected": selection.selected, "results": results})


if __name__ == "__main__":
    main()
