"""How fast the selection engine's read-ahead (mashup.selection.read_ahead) reads adapter files, by thread count.

A first halving round loads every candidate once: 1,000 float32 SmolLM2 adapters are about 10 GB, read
while the forwards run. This reads the same adapter dirs through ``AdapterReadAhead`` with 1, 2, 4, ...
threads (pinned blocks on CUDA, each then copied to the GPU as the engine does) and prints GB/s and the
ratio to one thread, so ``READ_THREADS`` can be set from a measurement on the machine that runs it.

    python benchmarks/read_ahead.py --adapters DIR [--limit 1000] [--threads 1,2,4,8] [--scoring-copies DIR2]

With ``--scoring-copies`` it first makes each adapter's bf16 copy in DIR2 (``mashup.selection.scoring_copies``,
what a selection scoring in bf16 keeps under the library dir), then times reading the copies beside reading
the float32 files at each thread count: the bytes a first halving round on a GPU reads, halved.

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
from mashup.selection.scoring_copies import ScoringCopies


def storage_factors(adapter_dir: Path) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, shape) of an adapter file's tensors, in the order a one-dtype file stores them."""
    return sorted_shapes(tensor_shapes(adapter_dir / "adapter_model.safetensors"))


def read_all(dirs: list[Path], factors: tuple, device: torch.device, threads: int,
             copies: ScoringCopies | None = None) -> tuple[float, int]:
    """Seconds to read every dir (its scoring copy, with ``copies``; and copy it to ``device`` where that is
    CUDA), and the bytes read."""
    reader = AdapterReadAhead(factors, device, threads=threads, copies=copies)
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
    parser.add_argument("--scoring-copies", type=Path, help="a dir to make bf16 copies in and time them too")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per case, alternating; the median")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    dirs = sorted(p.parent for p in args.adapters.glob("*/adapter_model.safetensors"))[:args.limit]
    if not dirs:
        raise SystemExit(f"{args.adapters}: no adapter dirs (*/adapter_model.safetensors); point at a dir of them")
    factors, device = storage_factors(dirs[0]), torch.device(args.device)
    read_all(dirs, factors, device, 1)  # warms the page cache (and CUDA's host allocator)
    copies = ScoringCopies(args.scoring_copies) if args.scoring_copies else None
    making = make_copies(dirs, factors, copies) if copies else None
    rows: dict[int, dict] = {}
    copy_rows: dict[int, dict] = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        files, copied = [], []
        for _ in range(args.repeats):
            files.append(read_all(dirs, factors, device, threads))
            if copies is not None:
                copied.append(read_all(dirs, factors, device, threads, copies))
        rows[threads] = _row(files, len(dirs))
        if copied:
            copy_rows[threads] = _row(copied, len(dirs))
    base_threads = min(rows)
    base = rows[base_threads]["seconds"]
    print(f"{len(dirs)} adapters, {rows[base_threads]['bytes_each'] / 1e6:.1f} MB each, to {device}:")
    for threads, row in rows.items():
        print(f"  {threads:>2} threads: {row['seconds']:.2f} s, {row['gb_per_s']:.1f} GB/s, "
              f"{row['ms_per_adapter']:.2f} ms per adapter, {base / row['seconds']:.2f}x {base_threads} thread(s)")
        if threads in copy_rows:
            copy = copy_rows[threads]
            print(f"     bf16 copies: {copy['seconds']:.2f} s, {copy['gb_per_s']:.1f} GB/s, "
                  f"{copy['ms_per_adapter']:.2f} ms per adapter, {row['seconds'] / copy['seconds']:.2f}x the files")
    if making is not None:
        print(f"  making the copies (read and written on 1 thread, once): {making:.2f} s")
    result = {"adapters": len(dirs), "bytes_each": rows[base_threads]["bytes_each"], "device": str(device),
              "threads": rows, "copies": copy_rows or None, "making_copies_seconds": making}
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return result


def make_copies(dirs: list[Path], factors: tuple, copies: ScoringCopies) -> float:
    """Seconds to write every dir's scoring copy, on this thread (a selection queues them for a thread of
    their own, and leaves some for later when it falls behind: here every one is made before the timing).
    A dir that is not one block of ``factors`` has none, as in a selection."""
    reader = AdapterReadAhead(factors, torch.device("cpu"), threads=1)
    start = time.perf_counter()
    reader.request(dirs)
    for adapter_dir in dirs:
        copy = copies.path_for(adapter_dir)
        block = reader.take(adapter_dir)
        if copy is not None and block is not None:
            copies.write(copy, block, factors)
    reader.close()
    return time.perf_counter() - start


def _row(passes: list[tuple[float, int]], adapters: int) -> dict:
    """The median pass's figures, and every pass's seconds."""
    seconds, total = sorted(passes)[len(passes) // 2]
    return {"seconds": seconds, "gb_per_s": total / seconds / 1e9, "ms_per_adapter": 1e3 * seconds / adapters,
            "bytes_each": total / adapters, "passes": [s for s, _ in passes]}


if __name__ == "__main__":
    main()
