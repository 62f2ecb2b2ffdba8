"""Seconds a live selection spends outside its forward passes: the adapters' reads and copies into slots,
the ranking between rounds and the driver around them, by selector.

Each scoring run's forward is replaced by a stand-in that derives every adapter's per-example losses from
the factors in its slot (so each adapter is still read and copied in, and halving still ranks and drops),
and the runs are counted. On a CPU the copies into slots run on the host; on CUDA they are queued behind
the forwards, so what this prints there is the host's work, not what a real run waits for.

    python benchmarks/selection_overhead.py --adapters 1000 --selectors exhaustive,halving --read-ahead both

With ``--real-forwards`` the forwards run for real and each line is a whole live selection's seconds, with
its share of exhaustive's: on a device whose forwards are compute-bound (a real model on a CPU) that share
should track the token share, the work outside the forwards being small beside them.

    python benchmarks/selection_overhead.py --target commonsense_qa --adapters 64 --samples 64 \
        --batch-size 16 --group-rows 64 --repeats 1 --selectors halving,exhaustive --real-forwards

With ``--scoring-copies on|both`` selections get a library dir, so that reading ahead in bf16
(``MASHUP_PRECISION=bf16 ... --read-ahead on``) they make bf16 copies of the float32 adapters and then read
them (``mashup.selection.scoring_copies``); ``both`` alternates with and without.

The library is ``--distinct`` random rank-8 LoRA adapters of the base (seeded, built once in ``--dir``)
repeated by hard links up to ``--adapters`` dirs: as many files to read as a real library, with page-cache
hits as for a library read moments ago. ``--group-rows`` sets the rows per forward (default 1,024, as on
CUDA) so that adapters group as they would on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from mashup.config import DataConfig, SelectConfig
from mashup.data.schema import sample
from mashup.data.target import load_target
from mashup.library import CheckpointRecord, inspect_checkpoint
from mashup.library.base_shapes import BaseShapes
from mashup.selection import engine, select_checkpoints
from mashup.selection.slots import GroupedLoRALinear
from mashup.workspace import Workspace, open_workspace

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def random_adapters(workspace: Workspace, root: Path, count: int) -> list[Path]:
    """``count`` seeded random rank-8 adapters of the workspace's base (made once)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dirs, model = [root / f"a{i}" for i in range(count)], None
    for seed, out in enumerate(dirs):
        if (out / "adapter_model.safetensors").exists():
            continue
        if model is None:
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(workspace.base_dir),
                                   LoraConfig(r=8, lora_alpha=16, target_modules=list(TARGETS)))
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_" in name:
                    parameter.normal_(0, 0.02)
        model.peft_config["default"].base_model_name_or_path = str(workspace.base_dir)
        model.save_pretrained(out, save_embedding_layers=False)
    return dirs


def linked_library(distinct: list[Path], root: Path, count: int) -> list[CheckpointRecord]:
    """``count`` adapter dirs, hard links to the distinct ones in turn, as catalog records ``c0``, ``c1``, ..."""
    records, base_shapes = [], BaseShapes()  # the base's model built once for all
    for i in range(count):
        out = root / f"c{i}"
        if not out.exists():
            out.mkdir(parents=True)
            for file in distinct[i % len(distinct)].iterdir():
                if file.is_file():
                    os.link(file, out / file.name)
        record = inspect_checkpoint(out, base_shapes=base_shapes)
        record.id = f"c{i}"  # linked copies share a hash; the catalog would reject them as one checkpoint
        records.append(record)
    return records


@contextlib.contextmanager
def counted_forwards(stand_in: bool = True) -> Iterator[list[int]]:
    """``ScoringPlan.run`` counted and, with ``stand_in``, replaced by losses read off the slots' factors;
    yields a one-item run counter."""
    from mashup import evaluation

    runs, original = [0], evaluation.ScoringPlan.run

    def run(plan, model, copies: int = 1, **stacking):
        runs[0] += len(plan.forward_rows(copies, stacking.get("stack_rows")))
        if not stand_in:
            return original(plan, model, copies, **stacking)
        module = next(m for m in model.modules() if isinstance(m, GroupedLoRALinear))
        per_adapter = module.lora_A[:copies].reshape(copies, -1)[:, :64].double().sum(dim=1)
        wobble = torch.arange(len(plan.requests), dtype=torch.float64).sin()
        return 3 + per_adapter[:, None] + 0.5 * wobble[None, :] * per_adapter[:, None].cos(), None

    evaluation.ScoringPlan.run = run
    try:
        yield runs
    finally:
        evaluation.ScoringPlan.run = original


def print_seconds_shares(runs: list[dict]) -> None:
    """Each run's seconds as a share of the exhaustive run's of the same repeat, read-ahead, stacking and copies,
    beside its token share."""
    def setting(run: dict) -> tuple:
        return run["repeat"], run["read_ahead"], run.get("stacked", True), run.get("copies", False)

    exhaustive = {setting(r): r["seconds"] for r in runs if r["selector"] == "exhaustive"}
    for r in runs:
        base = exhaustive.get(setting(r))
        if base and r["selector"] != "exhaustive":
            r["seconds_share"] = r["seconds"] / base
            print(f"{r['selector']:>10} read-ahead {r['read_ahead']!s:5} stacked {r.get('stacked', True)!s:5} copies "
                  f"{r.get('copies', False)!s:5}: {r['seconds_share']:.1%} of exhaustive's seconds, "
                  f"{r['token_share']:.1%} of its tokens", flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--target", default="arc_easy", help="a named task or a multiple-choice JSONL file")
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=64)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--group-rows", type=int, default=1024)
    parser.add_argument("--selectors", default="exhaustive,halving")
    parser.add_argument("--read-ahead", choices=["default", "on", "off", "both"], default="default")
    parser.add_argument("--stacking", choices=["on", "off", "both"], default="on",
                        help="each batch stacked for its share of a group, cut for it (the default engine), or every "
                        "batch run once for a whole group (off: engine.STACK_EACH_BATCH, the engine before)")
    parser.add_argument("--scoring-copies", choices=["on", "off", "both"], default="off",
                        help="on: selections get a library dir (under --dir), so that reading ahead into bf16 slots "
                        "(MASHUP_PRECISION=bf16) they make and then read bf16 copies of the float32 adapters")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the first also warms caches")
    parser.add_argument("--dir", type=Path, default=Path.home() / ".cache/mashup/selection-overhead")
    parser.add_argument("--real-forwards", action="store_true",
                        help="run the forwards instead of standing in for them: a live selection's seconds")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    data = DataConfig(data=args.target)
    workspace = open_workspace(args.base, data)
    root = args.dir / workspace.base_dir.name
    records = linked_library(random_adapters(workspace, root / "distinct", args.distinct), root / "library",
                             args.adapters)
    target = load_target(data)
    requests = workspace.encode(sample(target.train, args.samples, 0), target.template)
    engine.GROUP_ROWS = engine.CPU_LARGE_MODEL_GROUP_ROWS = engine.CUDA_GROUP_ROWS = args.group_rows
    modes = {"default": [None], "on": [True], "off": [False], "both": [True, False]}[args.read_ahead]
    print(f"{args.adapters} adapters ({args.distinct} distinct), {len(requests)} questions, {args.group_rows} rows "
          f"per forward, torch threads {torch.get_num_threads()}", flush=True)
    runs_out = []
    what = "in all" if args.real_forwards else "outside the forwards"
    stackings = {"on": [True], "off": [False], "both": [True, False]}[args.stacking]
    copies = {"on": [True], "off": [False], "both": [False, True]}[args.scoring_copies]
    with counted_forwards(stand_in=not args.real_forwards) as runs:
        for repeat, read_ahead, stacked, copied in itertools.product(range(args.repeats), modes, stackings, copies):
            engine.STACK_EACH_BATCH = stacked
            for name in args.selectors.split(","):
                config = SelectConfig(samples=args.samples, batch_size=args.batch_size, cache=False,
                                      selector=name, read_ahead=read_ahead)
                runs[0], start = 0, time.perf_counter()
                selection = select_checkpoints(workspace, records, requests, config,
                                               root / "copies-library" if copied else None)
                seconds = time.perf_counter() - start
                rounds = [{"samples": r.samples, "candidates": r.candidates, "seconds": r.seconds}
                          for r in selection.stats.rounds]
                runs_out.append({"repeat": repeat, "selector": name, "read_ahead": read_ahead, "stacked": stacked,
                                 "copies": copied, "precision": workspace.precision, "seconds": seconds,
                                 "scoring_runs": runs[0], "token_share": selection.stats.cost_ratio,
                                 "top2": [c.id for c in selection.ranking[:2]], "rounds": rounds})
                print(f"{name:>10} read-ahead {read_ahead!s:5} stacked {stacked!s:5} copies {copied!s:5}: "
                      f"{seconds:6.2f} s {what}, "
                      f"{runs[0]} forwards, {selection.stats.cost_ratio:.1%} of the tokens, top 2 "
                      f"{runs_out[-1]['top2']}; rounds "
                      + ", ".join(f"{r['samples']}q x {r['candidates']} {r['seconds']:.2f}s" for r in rounds),
                      flush=True)
    print_seconds_shares(runs_out)
    result = {"settings": {k: str(v) for k, v in vars(args).items()}, "runs": runs_out}
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
