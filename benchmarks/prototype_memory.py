"""Memory and time of a warm Arrow prefilter's matching: cached prototype rows read a block at a time
(``SignalCache.prototype_blocks``, what ``prefilter.compute_signals`` does) against all of them read at once
(``SignalCache.prototypes`` then one stack), the way it was before. Each way runs in a fresh process over
the same cache, and prints its peak resident memory above what it held before matching:

    python benchmarks/prototype_memory.py --candidates 1000 --shape smollm2-135m
    python benchmarks/prototype_memory.py --candidates 500 --shape llama-7b --input-rows 32

Rows are random unit vectors of the model's LoRA layout (q, k, v, o, gate, up, down in every layer); the
probe's input rows are random too: the figures are of memory and time, not of ranking.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mashup.selection.arrow import affinity, unit_inputs
from mashup.selection.prefilter import arrow_block_rows
from mashup.selection.signal_cache import SignalCache

SHAPES = {"smollm2-135m": (30, 576, 1536), "llama-7b": (32, 4096, 11008)}  # layers, hidden, intermediate


def layout_of(shape: str) -> list[tuple[str, int]]:
    layers, hidden, intermediate = SHAPES[shape]
    return [(f"model.layers.{i}.{name}", intermediate if name == "down" else hidden)
            for i in range(layers) for name in ("q", "k", "v", "o", "gate", "up", "down")]


def fill_cache(cache_dir: Path, shape: str, candidates: int) -> None:
    layout, generator = layout_of(shape), torch.Generator().manual_seed(0)
    width = sum(size for _, size in layout)
    cache = SignalCache(cache_dir)
    for start in range(0, candidates, 50):
        rows = torch.randn(min(50, candidates - start), width, generator=generator)
        cache.put_prototypes({f"k{start + i}": row / row.norm() for i, row in enumerate(rows)}, layout)


def match(cache_dir: Path, shape: str, candidates: int, input_rows: int, way: str) -> dict:
    """One way's values, seconds and peak memory above the resident memory before it (KiB)."""
    layout, generator = layout_of(shape), torch.Generator().manual_seed(1)
    inputs = {m: torch.randn(input_rows, size, generator=generator) for m, size in layout}
    units = unit_inputs(inputs, torch.device("cpu"))
    keys, cache = [f"k{i}" for i in range(candidates)], SignalCache(cache_dir)
    before, start, values = _resident_kib(), time.perf_counter(), {}
    if way == "blocks":
        for found, block in cache.prototype_blocks(keys, layout, arrow_block_rows(layout)):
            values.update(zip(found, affinity(units, block, layout)))
    else:
        rows = cache.prototypes(keys, layout)
        stacked = torch.stack([rows[k] for k in keys])
        for start_row in range(0, candidates, 256):  # the old code matched the stack 256 rows at a time
            block = stacked[start_row:start_row + 256]
            values.update(zip(keys[start_row:start_row + 256], affinity(units, block, layout)))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"way": way, "seconds": seconds, "extra_kib": max(0, peak - before), "values": [values[k] for k in keys]}


def _resident_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    parser.add_argument("--input-rows", type=int, default=64, help="probe rows per module (the prefilter takes 512)")
    parser.add_argument("--way", choices=("blocks", "whole"), help=argparse.SUPPRESS)  # one way, in a child process
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        print(json.dumps(match(args.cache_dir, args.shape, args.candidates, args.input_rows, args.way)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        fill_cache(Path(tmp), args.shape, args.candidates)
        row_mib = 2 * sum(size for _, size in layout_of(args.shape)) / 2**20
        print(f"{args.candidates} cached rows of {args.shape}, {row_mib:.2f} MiB each "
              f"({args.candidates * row_mib:.0f} MiB in all), {arrow_block_rows(layout_of(args.shape))} rows a block")
        results = {}
        for way in ("whole", "blocks"):
            out = subprocess.run([sys.executable, __file__, "--way", way, "--cache-dir", tmp, "--shape", args.shape,
                                  "--candidates", str(args.candidates), "--input-rows", str(args.input_rows)],
                                 check=True, capture_output=True, text=True).stdout
            results[way] = json.loads(out.strip().splitlines()[-1])
            print(f"  {way:>6}: {results[way]['seconds']:.2f} s, peak {results[way]['extra_kib'] / 1024:.0f} MiB "
                  "above the memory held before matching")
    whole, blocks = results["whole"], results["blocks"]
    same = torch.allclose(torch.tensor(whole["values"]), torch.tensor(blocks["values"]), rtol=1e-6)
    print(f"blocks/whole: memory {blocks['extra_kib'] / max(1, whole['extra_kib']):.2f}x, "
          f"seconds {blocks['seconds'] / whole['seconds']:.2f}x, same values: {same}")


if __name__ == "__main__":
    main()
