"""Live selections on the library-scale benchmark's library, alternated under engine settings: where a
halving's seconds go on a device, and which setting moves its share of exhaustive's.

Run after ``benchmarks/selection.py --library-size N`` has built the library (same cache, same flags):

    python benchmarks/selection_live_ab.py --targets commonsense_qa --variants default,threads8,rows2048 \
        --halving-repeats 3 --exhaustive-repeats 1

Each repeat runs every variant's halving once, in turn (so drift hits every variant alike); exhaustive runs
only under the variants that change its forwards or reads (``rows*``, ``wholegroups``, ``copies``), plus
``default``. Variants:

- ``default``: the engine as it ships.
- ``threadsN``: N read-ahead threads (``read_ahead.READ_THREADS``).
- ``budgetN``: N GiB of host memory that reads may hold ahead of use (``read_ahead.READ_AHEAD_BYTES``).
- ``rowsN``: N rows per forward on CUDA (``engine.CUDA_GROUP_ROWS``).
- ``wholegroups``: every batch runs once for a whole group of adapters, sized by the questions scored, as
  the engine did before each batch stacked its own share (``engine.STACK_EACH_BATCH``).
- ``keepoff``: no loaded blocks kept on the device (``read_ahead.DEVICE_KEEP_SHARE`` = 0).
- ``gcoff``: Python's garbage collector off during the selection.
- ``mmapreads``: the read-ahead maps each file and copies it, as before ``mashup.io.read_dir_block_into``.
- ``copies``: selections given the library dir, so that reading ahead in bf16 they read bf16 copies of the
  float32 adapters (``mashup.selection.scoring_copies``); the other variants read the files. Every candidate's
  copy is made first, on one thread (its seconds are reported); it runs exhaustive too.

``--split`` also times one halving with the device synchronised around every forward
(``ScoringPlan.run``), so its seconds split into forwards and everything else, forward by forward (rows,
copies, seconds), ``--check-peft K`` scores K of the pool's adapters with the engine and with PEFT one at a
time, and ``--forward-curve`` times forwards of one adapter group at growing rows: the seconds
to queue them (host) and to finish them (device), which says whether forwards there are bound by the host
launching kernels or by the device computing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from selection_library import (bench_dir, candidates, parse_args as bench_args, selector_config, target_setup,
                               timed_selection)


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    """The engine setting a variant names, restored afterwards."""
    from mashup.selection import engine, read_ahead

    names = ((read_ahead, "READ_THREADS"), (engine, "CUDA_GROUP_ROWS"), (read_ahead, "DEVICE_KEEP_SHARE"),
             (read_ahead, "READ_AHEAD_BYTES"), (engine, "STACK_EACH_BATCH"))
    saved = [getattr(module, name) for module, name in names]
    read = read_ahead.AdapterReadAhead._read
    try:
        if name.startswith("threads"):
            read_ahead.READ_THREADS = int(name[len("threads"):])
        elif name.startswith("budget"):
            read_ahead.READ_AHEAD_BYTES = int(float(name[len("budget"):]) * (1 << 30))
        elif name.startswith("rows"):
            engine.CUDA_GROUP_ROWS = int(name[len("rows"):])
        elif name == "wholegroups":
            engine.STACK_EACH_BATCH = False
        elif name == "keepoff":
            read_ahead.DEVICE_KEEP_SHARE = 0.0
        elif name == "gcoff":
            gc.disable()
        elif name == "mmapreads":
            read_ahead.AdapterReadAhead._read = mapped_read
        elif name not in ("default", "copies"):  # copies: the library dir is passed (main)
            raise SystemExit(f"unknown variant {name}: default, threadsN, budgetN, rowsN, wholegroups, keepoff, gcoff, "
                             "mmapreads or copies")
        yield
    finally:
        for (module, attribute), value in zip(names, saved):
            setattr(module, attribute, value)
        read_ahead.AdapterReadAhead._read = read
        gc.enable()


def mapped_read(reader, adapter_dir: Path) -> torch.Tensor | None:
    """The read-ahead's read before ``mashup.io.read_dir_block_into``: the file mapped, then copied into a new
    (pinned, for CUDA) block on the thread."""
    from mashup.io import read_dir_block

    block = read_dir_block(adapter_dir, reader.factors, allow_pickle=reader.allow_pickle)
    if block is None:
        return None
    staged = torch.empty(block.shape, dtype=block.dtype, pin_memory=reader.pin)
    staged.view(torch.uint8).numpy()[:] = block.view(torch.uint8).numpy()
    return staged


def live(workspace, pool, requests, config, library_dir: Path | None = None) -> dict:
    """One live selection (``selection_library.timed_selection``: cache off) as a JSON-ready record."""
    selection, seconds = timed_selection(workspace, pool, requests, config, library_dir)
    return {"seconds": seconds, "top2": [s.id for s in selection.ranking[:2]],
            "token_share": selection.stats.cost_ratio,
            "rounds": [[r.samples, r.candidates, round(r.seconds, 3)] for r in selection.stats.rounds]}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def timed_forwards(device: torch.device) -> Iterator[list[dict]]:
    """Every ``ScoringPlan.run`` timed with the device synchronised before and after it."""
    from mashup import evaluation

    forwards, original = [], evaluation.ScoringPlan.run

    def run(plan, model, copies: int = 1, **stacking):
        synchronize(device)
        start = time.perf_counter()
        out = original(plan, model, copies, **stacking)
        synchronize(device)
        forwards.append({"rows": plan.forward_rows(copies, stacking.get("stack_rows")), "copies": copies,
                         "seconds": time.perf_counter() - start})
        return out

    evaluation.ScoringPlan.run = run
    try:
        yield forwards
    finally:
        evaluation.ScoringPlan.run = original


def check_against_peft(workspace, pool, requests, adapters: int, questions: int = 32, per_forward: int = 4
                       ) -> list[dict]:
    """The engine's losses (``per_forward`` adapters a forward, read ahead) against PEFT's (each
    adapter attached to a fresh base, one at a time) for the pool's first ``adapters`` on the first ``questions``, in
    fp32 and in the run's precision: the largest gap beside how far apart the adapters' own losses are (a slot
    holding the wrong adapter, or read before its copy landed, shows a gap of that size)."""
    from mashup.selection.engine import ScoringEngine

    from selection import peft_losses  # benchmarks/selection.py: its naive loop

    records, sample = pool[:adapters], requests[:questions]
    settings = workspace.settings(256)
    out = []
    for bf16 in sorted({False, settings.bf16}):
        exact = dataclasses.replace(settings, bf16=bf16)
        engine = ScoringEngine(workspace.base_dir, sample, exact, adapters_per_forward=per_forward, with_accuracy=False,
                               read_ahead=True)
        ours = torch.tensor([s.losses for s in engine.score(records)])
        theirs = torch.stack(peft_losses(workspace.base_dir, [Path(r.path) for r in records], sample, exact))
        means = theirs.mean(dim=1)
        row = {"precision": exact.precision, "adapters": len(records), "questions": len(sample),
               "max_gap": float((ours - theirs).abs().max()), "max_mean_gap": float((ours.mean(1) - means).abs().max()),
               "mean_spread": float(means.max() - means.min()),
               "same_order": ours.mean(1).argsort().tolist() == means.argsort().tolist()}
        out.append(row)
        print(f"  engine against PEFT, {row['precision']}, {len(records)} adapters x {len(sample)} questions: largest "
              f"gap {row['max_gap']:.2e} (mean loss {row['max_mean_gap']:.2e}), the adapters' mean losses "
              f"{row['mean_spread']:.2e} apart, same order {row['same_order']}", flush=True)
        del engine
    return out


def forward_curve(workspace, pool, requests, config, rows_list: list[int]) -> list[dict]:
    """Seconds to queue and to finish one forward of ``rows`` rows (the sample's first questions stacked
    over G adapters in slots), three times each after a warm-up."""
    from mashup.batching import continuation_logprobs
    from mashup.models import autocast
    from mashup.selection.engine import ScoringEngine

    settings = workspace.settings(config.batch_size)
    questions = 8
    out = []
    for rows in rows_list:
        group = max(1, rows // questions)
        engine = ScoringEngine(workspace.base_dir, requests, settings, adapters_per_forward=group,
                               with_accuracy=False, read_ahead=False)
        engine.score(pool[:group], range(questions))  # builds the slots, loads the adapters, warms up
        # the engine's own model and slots: the forward alone is timed, without the loads around it
        plan, model = engine.plan(tuple(range(questions))), engine._slot_model
        engine._slots.activate(group)
        queued, finished = [], []
        for _ in range(3):
            synchronize(settings.device)
            start = time.perf_counter()
            for batch in plan.batches:  # the forward alone: no copy of its losses back to the host
                with torch.no_grad(), autocast(settings.device, settings.bf16):
                    continuation_logprobs(model, batch.inputs, group)
            queued.append(time.perf_counter() - start)
            synchronize(settings.device)
            finished.append(time.perf_counter() - start)
        out.append({"rows": group * questions, "adapters": group, "queued_s": statistics.median(queued),
                    "finished_s": statistics.median(finished)})
        print(f"  forward of {group * questions:5d} rows ({group} adapters x {questions} questions): queued in "
              f"{out[-1]['queued_s'] * 1e3:6.1f} ms, finished in {out[-1]['finished_s'] * 1e3:6.1f} ms", flush=True)
        del engine, model
        if settings.device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="commonsense_qa")
    parser.add_argument("--variants", default="default")
    parser.add_argument("--halving-repeats", type=int, default=3)
    parser.add_argument("--exhaustive-repeats", type=int, default=1)
    parser.add_argument("--split", action="store_true")
    parser.add_argument("--forward-curve", default="", help="rows, e.g. 256,512,1024,2048")
    parser.add_argument("--check-peft", type=int, default=0, help="adapters to score with the engine and PEFT")
    parser.add_argument("--bench-args", default="", help="flags of selection.py the library was built with")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    bench = bench_args(args.bench_args.split())
    from mashup.library import Library

    library = Library(bench_dir(bench) / "library")
    result: dict = {"variants": args.variants, "targets": {}}
    for target in args.targets.split(","):
        pool = candidates(library, target, bench)
        workspace, _, requests = target_setup(target, bench)
        runs: list[dict] = []
        result["targets"][target] = {"candidates": len(pool), "runs": runs}
        print(f"{target}: {len(pool)} candidates, {len(requests)} questions", flush=True)
        if args.check_peft:
            result["targets"][target]["check_peft"] = check_against_peft(workspace, pool, requests, args.check_peft)
        if "copies" in args.variants.split(","):
            result["targets"][target]["copies_made_seconds"] = made = make_all_copies(library.directory, pool)
            print(f"  scoring copies of {len(pool)} candidates made in {made:.1f} s", flush=True)
        for name, selector, repeat in schedule(args.variants.split(","), args.halving_repeats,
                                               args.exhaustive_repeats):
            library_dir = library.directory if name == "copies" else None
            with variant(name):
                run = live(workspace, pool, requests, selector_config(bench, selector), library_dir)
            runs.append({"variant": name, "selector": selector, "repeat": repeat, **run})
            print(f"  {name:>10} {selector:>10}: {run['seconds']:6.2f} s, tokens {run['token_share']:.2%}, "
                  f"top-2 {run['top2']}, rounds {run['rounds']}", flush=True)
        summarize(runs)
        config = selector_config(bench, "halving")
        if args.split:
            with timed_forwards(workspace.settings(config.batch_size).device) as forwards:
                run = live(workspace, pool, requests, config)
            inside = sum(f["seconds"] for f in forwards)
            result["targets"][target]["split"] = {**run, "forwards": forwards, "forward_seconds": inside}
            print(f"  halving, synchronised: {run['seconds']:.2f} s, {len(forwards)} scoring runs "
                  f"{inside:.2f} s, outside them {run['seconds'] - inside:.2f} s", flush=True)
            for f in forwards:
                print(f"    rows {f['rows']} ({f['copies']} adapters): {f['seconds'] * 1e3:.1f} ms", flush=True)
        if args.forward_curve:
            result["targets"][target]["forward_curve"] = forward_curve(
                workspace, pool, requests, config, [int(r) for r in args.forward_curve.split(",")])
        if args.json_out:
            args.json_out.write_text(json.dumps(result, indent=1))


def make_all_copies(library_dir: Path, pool: list) -> float:
    """Seconds to make the pool's bf16 scoring copies where the ``copies`` variant's selections read them."""
    from read_ahead import make_copies, storage_factors  # benchmarks/read_ahead.py

    from mashup.selection.scoring_copies import SCORING_COPIES_DIR, ScoringCopies

    dirs = [Path(r.path) for r in pool]
    return make_copies(dirs, storage_factors(dirs[0]), ScoringCopies(library_dir / SCORING_COPIES_DIR))


def schedule(variants: list[str], halving_repeats: int, exhaustive_repeats: int) -> list[tuple[str, str, int]]:
    """(variant, selector, repeat) in run order: each repeat runs every variant in turn; exhaustive only under the
    variants that change its forwards or reads."""
    runs = []
    for repeat in range(max(halving_repeats, exhaustive_repeats)):
        for name in variants:
            if repeat < halving_repeats:
                runs.append((name, "halving", repeat))
            forwards_or_reads = name in ("default", "wholegroups", "copies") or name.startswith("rows")
            if repeat < exhaustive_repeats and forwards_or_reads:
                runs.append((name, "exhaustive", repeat))
    return runs


def summarize(runs: list[dict]) -> None:
    """Median seconds per variant and selector, and halving's share of exhaustive's."""
    medians: dict[tuple[str, str], float] = {}
    for key in sorted({(r["variant"], r["selector"]) for r in runs}):
        medians[key] = statistics.median(r["seconds"] for r in runs if (r["variant"], r["selector"]) == key)
    for (name, selector), seconds in medians.items():
        exhaustive = medians.get((name, "exhaustive")) or medians.get(("default", "exhaustive"))
        share = f", {seconds / exhaustive:.1%} of exhaustive's" if selector == "halving" and exhaustive else ""
        print(f"  median {name:>10} {selector:>10}: {seconds:6.2f} s{share}", flush=True)


if __name__ == "__main__":
    main()
