"""How fast the selection engine's read-ahead (mashup.selection.read_ahead) reads adapter files, by thread count.

A first halving round loads every candidate once: 1,000 float32 SmolLM2 adapters are about 10 GB, read
while the forwards run. This reads the same adapter dirs through ``AdapterReadAhead`` with 1, 2, 4, ...
threads (pinned blocks on CUDA, each then copied to the GPU as the engine does) and prints GB/s and the
ratio to one thread, so ``READ_THREADS`` can be set from a measurement on the machine that runs it.

    python benchmarks/read_ahead.py --adapters DIR [--limit 1000] [--threads 1,2,4,8]

DIR holds adapter dirs (each with adapter_model.safetensors), e.g. a library's ``checkpoints/``. The
first pass warms the page cache and is not reported: what is timed is the copy from the page cache,
which is what a selection over a library read moments ago pays.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mashup.io import sorted_shapes, tensor_shapes
from mashup.selection.read_ahead import AdapterReadAhead


def storage_factors(adapter_dir: Path) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, shape) of an adapter file's tensors, in the order a one-dtype file stores them."""
    return sorted_shapes(tensor_shapes(adapter_dir / "adapter_model.safetensors"))


def read_all(dirs: list[Path], factors: tuple, device: torch.device, threads: int) -> tuple[float, int]:
    """Seconds to read every dir (and copy it to ``device`` where that is CUDA), and the bytes read."""
    reader = AdapterReadAhead(factors, device, threads=threads)
    target = torch.empty(reader.block_bytes, dtype=torch.uint8, device=device) if device.type == "cuda" else None
    start, total = time.perf_counter(), 0
    reader.request(dirs)
    for adapter_dir in dirs:
        block = reader.take(adapter_dir)
        if block is None:
            raise SystemExit(f"{adapter_dir}: not a one-block adapter file of the first dir's layout")
        raw = block.view(torch.uint8)
        total += raw.numel()
        if target is not None:
            target[:raw.numel()].copy_(raw, non_blocking=True)
    if target is not None:
        torch.cuda.synchronize()
    return time.perf_counter() - start, total


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", type=Path, required=True, help="a dir of adapter dirs")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--threads", default="1,2,4,8")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    dirs = sorted(p.parent for p in args.adapters.glob("*/adapter_model.safetensors"))[:args.limit]
    if not dirs:
        raise SystemExit(f"{args.adapters}: no adapter dirs (*/adapter_model.safetensors); point at a dir of them")
    factors, device = storage_factors(dirs[0]), torch.device(args.device)
    read_all(dirs, factors, device, 1)  # warms the page cache (and CUDA's host allocator)
    rows = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        seconds, total = read_all(dirs, factors, device, threads)
        rows[threads] = {"seconds": seconds, "gb_per_s": total / seconds / 1e9,
                         "ms_per_adapter": 1e3 * seconds / len(dirs)}
    base = rows[min(rows)]["seconds"]
    print(f"{len(dirs)} adapters, {total / len(dirs) / 1e6:.1f} MB each, to {device}:")
    for threads, row in rows.items():
        print(f"  {threads:>2} threads: {row['seconds']:.2f} s, {row['gb_per_s']:.1f} GB/s, "
              f"{row['ms_per_adapter']:.2f} ms per adapter, {base / row['seconds']:.2f}x {min(rows)} thread(s)")
    result = {"adapters": len(dirs), "bytes_each": total / len(dirs), "device": str(device), "threads": rows}
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
