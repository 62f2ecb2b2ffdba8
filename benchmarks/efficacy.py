"""Mashup vs from-scratch on named tasks, leave-one-out, with a configurable budget.

The demo's comparison (same steps, lr, schedule, data and seed for both arms; only the
initialisation differs), run for each target with the other tasks as the source library.

    python benchmarks/efficacy.py --targets openbookqa --pool arc_easy sciq commonsense_qa social_iqa
                                                                            # the demo's CPU budget
    python benchmarks/efficacy.py --paper --targets arc_easy openbookqa     # paper settings (GPU)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

from mashup.progress import quiet_third_party
from mashup.demo import DemoSettings, run_demo
from mashup.demo_report import mean_parity_fraction

POOL = ("arc_easy", "commonsense_qa", "hellaswag", "openbookqa", "piqa", "social_iqa", "winogrande", "sciq")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--targets", nargs="+", default=["arc_easy"])
    parser.add_argument("--pool", nargs="+", default=list(POOL), help="tasks the sources are drawn from")
    demo = DemoSettings()  # defaults: the demo's CPU budget
    parser.add_argument("--seeds", nargs="+", type=int, default=list(demo.seeds))
    parser.add_argument("--scoring", default=demo.scoring, choices=["letter", "cloze", "auto"])
    parser.add_argument("--steps", type=int, default=demo.steps, help="target steps (0: one epoch)")
    parser.add_argument("--source-steps", type=int, default=demo.source_steps, help="source steps (0: one epoch)")
    parser.add_argument("--eval-every", type=int, default=demo.eval_every, help="0: every 10%% of the steps")
    parser.add_argument("--lr", type=float, default=demo.lr)
    parser.add_argument("--source-lr", type=float, default=demo.source_lr)
    parser.add_argument("--batch-size", type=int, default=demo.batch_size)
    parser.add_argument("--source-batch-size", type=int, default=demo.source_batch_size)
    parser.add_argument("--test-examples", type=int, default=demo.test_examples, help="0: the whole test split")
    parser.add_argument("--select-samples", type=int, default=demo.select_samples)
    parser.add_argument("--k", type=int, default=demo.k)
    parser.add_argument("--max-length", type=int, default=demo.max_length)
    parser.add_argument("--paper", action="store_true",
                        help="paper settings: 1 epoch, batch 32, 256 selection samples, full test split, lr 2e-4")
    parser.add_argument("--out", type=Path, default=Path("runs/efficacy"))
    parser.add_argument("--json-out", type=Path, default=None)
    return parser.parse_args()


def settings_for(args: argparse.Namespace, target: str) -> DemoSettings:
    none_if_zero = lambda value: value or None  # noqa: E731
    if args.paper:
        args.steps, args.source_steps, args.eval_every, args.batch_size, args.source_batch_size = 0, 0, 0, 32, 32
        args.test_examples, args.select_samples, args.lr, args.source_lr, args.max_length = 0, 256, 2e-4, 2e-4, 384
    return DemoSettings(
        base=args.base, target=target, sources=tuple(t for t in args.pool if t != target), scoring=args.scoring,
        max_length=args.max_length, source_steps=none_if_zero(args.source_steps), source_lr=args.source_lr,
        source_batch_size=args.source_batch_size,
        steps=none_if_zero(args.steps), eval_every=none_if_zero(args.eval_every), lr=args.lr,
        batch_size=args.batch_size, test_examples=none_if_zero(args.test_examples),
        select_samples=args.select_samples, k=args.k, seeds=tuple(args.seeds))


def figures(summary: dict) -> dict:
    finals = {arm: mean(s[arm]["curve"][-1]["accuracy"] for s in summary["seeds"]) for arm in ("mashup", "scratch")}
    return {"target": summary["target"], "base_zero_shot": summary["zero_shot"]["base"],
            "merged_zero_shot": summary["zero_shot"]["merged"], "mashup_final": finals["mashup"],
            "scratch_final": finals["scratch"], "gain_pp": 100 * (finals["mashup"] - finals["scratch"]),
            "parity_fraction_p100": mean_parity_fraction(summary, "p100"),
            "parity_fraction_p99": mean_parity_fraction(summary, "p99"), "seconds": summary["seconds"]}


def main() -> None:
    quiet_third_party()
    args = parse_args()
    rows = [figures(run_demo(args.out / target, settings=settings_for(args, target))) for target in args.targets]
    print(f"{'target':<16}{'base':>7}{'merged':>8}{'scratch':>9}{'mashup':>8}{'gain pp':>9}{'parity99':>10}{'parity100':>11}")
    for r in rows:
        pct = lambda f: "never" if f is None else f"{100 * f:.0f}%"  # noqa: E731
        print(f"{r['target']:<16}{r['base_zero_shot']:>7.3f}{r['merged_zero_shot']:>8.3f}{r['scratch_final']:>9.3f}"
              f"{r['mashup_final']:>8.3f}{r['gain_pp']:>9.1f}{pct(r['parity_fraction_p99']):>10}"
              f"{pct(r['parity_fraction_p100']):>11}")
    out = args.json_out or args.out / "efficacy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out), "json_out": str(out)}, "results": rows},
                              indent=2, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
