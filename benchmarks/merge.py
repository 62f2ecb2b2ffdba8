"""Peak memory and time of streaming full-model merges against loading every state dict.

Builds k perturbed copies of a >=100M-parameter model, then runs each merge in its own
subprocess: our streaming ``average`` and ``ties``, and a baseline that loads all state dicts
and averages them. Peak memory is the child's VmHWM (ru_maxrss would also count the parent's
memory at fork time, which Linux carries across exec). Seconds cover the merge call only, not
imports or building catalog records. Prints a table, optionally writes JSON.

    python benchmarks/merge.py --synthetic --json-out merge-bench.json

``--lora-factor`` instead times the LoRA delta-mode factorization on every Linear shape of the
base's decoder layers (k random rank-r adapters): our stacked-QR route (linear methods) and
randomized SVD (ties) against a dense float64 SVD of each module's ΔW (the previous method), with
their relative errors against the optimal rank-r error.

    python benchmarks/merge.py --lora-factor --ks 2,3 --rank 8
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHILD_MODES = ("ours", "baseline", "mergekit")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="HF model dir (default: the cached smollm2-135m, else synthetic)")
    parser.add_argument("--synthetic", action="store_true", help="random Llama, hidden 768, 12 layers (~110M)")
    parser.add_argument("--ks", default="2,3,8", help="comma-separated numbers of inputs")
    parser.add_argument("--methods", default="average,ties", help="our methods to run")
    parser.add_argument("--density", type=float, default=0.5, help="density for ties/dare_ties")
    parser.add_argument("--work-dir", type=Path, help="where inputs and outputs go (default: a temp dir)")
    parser.add_argument("--json-out", type=Path, help="write the results here")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in every child (1 is fairest on a shared machine)")
    parser.add_argument("--lora-factor", action="store_true", help="benchmark LoRA delta-mode factorization")
    parser.add_argument("--rank", type=int, default=8, help="adapter and output rank for --lora-factor")
    parser.add_argument("--child", choices=CHILD_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", nargs="*", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- children: one merge each, reporting their own peak RSS -------------------------------------------------


def _records(args: argparse.Namespace) -> list:
    from mashup.library.records import inspect_checkpoint

    records = [inspect_checkpoint(p, base=str(args.base)) for p in args.inputs]
    for i, record in enumerate(records):
        record.id = f"in{i}"
    return records


def child_ours(args: argparse.Namespace) -> float:
    from mashup.config import MergeConfig
    from mashup.merging import merge_checkpoints

    records = _records(args)
    config = MergeConfig(method=args.method, density=args.density if args.method != "average" else None)
    start = time.perf_counter()
    merge_checkpoints(records, config, args.out, base_model_dir=args.base)
    return time.perf_counter() - start


def child_baseline(args: argparse.Namespace) -> float:
    start = time.perf_counter()
    states = [load_file(str(p / "model.safetensors")) for p in args.inputs]
    merged = {name: sum(s[name] for s in states) / len(states) for name in states[0]}
    args.out.mkdir(parents=True)
    save_file(merged, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    return time.perf_counter() - start


def child_mergekit(args: argparse.Namespace) -> float:
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    from mashup.config import MergeConfig
    from mashup.merging import export_mergekit_yaml

    config = MergeConfig(method=args.method, density=args.density if args.method != "average" else None)
    text = export_mergekit_yaml(_records(args), config, str(args.base))
    start = time.perf_counter()
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), str(args.out),
              options=MergeOptions(copy_tokenizer=False))
    return time.perf_counter() - start


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark (VmHWM), which starts afresh at exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def run_child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    seconds = {"ours": child_ours, "baseline": child_baseline, "mergekit": child_mergekit}[args.child](args)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


# ---- parent: build inputs, launch children, print the table --------------------------------------------------


def synthetic_base(out_dir: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                         num_key_value_heads=12, vocab_size=32000, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    return out_dir


def resolve_base(args: argparse.Namespace, work: Path) -> tuple[Path, str]:
    if args.base:
        return args.base, str(args.base)
    if not args.synthetic:
        try:
            from mashup.models import resolve_base_dir

            return resolve_base_dir("smollm2-135m"), "smollm2-135m"
        except Exception as exc:  # noqa: BLE001 - any failure means: fall back to a synthetic model
            print(f"smollm2-135m unavailable ({type(exc).__name__}: {exc}); using a synthetic model")
    return synthetic_base(work / "base"), "synthetic llama ~110M"


def make_inputs(base: Path, work: Path, k: int) -> list[Path]:
    """k fine-tune stand-ins: the base weights plus seeded noise, one single-file dir each."""
    state: dict[str, torch.Tensor] = {}
    for file in sorted(base.glob("*.safetensors")):
        state.update(load_file(str(file)))
    paths = []
    for i in range(k):
        out = work / f"ft{i}"
        out.mkdir(exist_ok=True)
        generator = torch.Generator().manual_seed(100 + i)
        noisy = {n: t + 0.01 * torch.randn(t.shape, generator=generator, dtype=t.dtype) if t.is_floating_point()
                 else t for n, t in state.items()}
        save_file(noisy, str(out / "model.safetensors"), metadata={"format": "pt"})
        shutil.copy2(base / "config.json", out / "config.json")
        paths.append(out)
    return paths


def launch(mode: str, method: str, base: Path, inputs: list[Path], out: Path, args: argparse.Namespace
           ) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", mode, "--method", method, "--base", str(base),
               "--density", str(args.density), "--threads", str(args.threads), "--out", str(out),
               "--inputs", *map(str, inputs)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} {method} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {mode:<8} {method:<8} k={len(inputs)}: {result['seconds']:.1f}s, {result['peak_rss_mb']:.0f} MB",
          file=sys.stderr, flush=True)
    return result


def mergekit_available() -> str | None:
    try:
        import mergekit.merge  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def lora_factor_rows(base: Path, ks: list[int], rank: int, density: float) -> list[dict]:
    """Seconds and errors of our factorization against a dense float64 SVD per module, summed over modules."""
    from mashup.merging import MergeParams, merge_tensors
    from mashup.merging.lowrank import factor_dense, factor_stacked

    shapes = [tuple(t.shape) for f in sorted(base.glob("*.safetensors")) for n, t in load_file(str(f)).items()
              if ".layers." in n and n.endswith("proj.weight")]
    rows = []
    for k in ks:
        generator = torch.Generator().manual_seed(k)
        for method in ("average", "ties"):
            row = {"k": k, "method": method, "modules": len(shapes), "ours_s": 0.0, "dense_f64_s": 0.0,
                   "tail_ours": 0.0, "tail_optimal": 0.0, "total": 0.0}
            for out, inp in shapes:
                bs = [0.01 * torch.randn(out, rank, generator=generator) for _ in range(k)]
                as_ = [torch.randn(rank, inp, generator=generator) / inp**0.5 for _ in range(k)]
                if method == "average":
                    start = time.perf_counter()
                    factors = factor_stacked([b / k for b in bs], as_, rank, 1.0, generator)
                    row["ours_s"] += time.perf_counter() - start
                    start = time.perf_counter()
                    delta = sum(b.double() @ a.double() for b, a in zip(bs, as_)) / k
                else:
                    delta = merge_tensors("ties", [b @ a for b, a in zip(bs, as_)], [1.0] * k, None,
                                          MergeParams(density=density))
                    start = time.perf_counter()
                    factors = factor_dense(delta, rank, 1.0, generator)
                    row["ours_s"] += time.perf_counter() - start
                    start = time.perf_counter()
                singular = torch.linalg.svd(delta.double(), full_matrices=False).S
                row["dense_f64_s"] += time.perf_counter() - start
                row["tail_ours"] += factors.tail
                row["tail_optimal"] += float((singular[rank:] ** 2).sum())
                row["total"] += float((singular**2).sum())
            rows.append(row)
            print(f"  {method:<8} k={k}: ours {row['ours_s']:.2f}s, dense f64 SVD {row['dense_f64_s']:.2f}s",
                  file=sys.stderr, flush=True)
    return rows


def print_lora_table(rows: list[dict], rank: int) -> None:
    header = (f"{'k':>2} {'method':<8} {'modules':>7} {'ours s':>7} {'dense s':>8} {'speed-up':>8} "
              f"{'err ours':>9} {'err opt':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        error, optimal = ((row[key] / row["total"]) ** 0.5 for key in ("tail_ours", "tail_optimal"))
        print(f"{row['k']:>2} {row['method']:<8} {row['modules']:>7} {row['ours_s']:>7.2f} {row['dense_f64_s']:>8.2f} "
              f"{row['dense_f64_s'] / row['ours_s']:>8.1f} {error:>9.4f} {optimal:>8.4f}")
    print(f"rank {rank}; ours = stacked QR + small SVD (average) or randomized SVD (ties); dense = float64\n"
          "torch.linalg.svd of each module's ΔW (the previous method; for average its time includes forming ΔW);\n"
          "err = overall relative Frobenius error of the rank-r factors, opt = the optimal (truncated SVD) error")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return
    if args.lora_factor:
        torch.set_num_threads(args.threads)
        work = Path(tempfile.mkdtemp(prefix="merge-bench-"))
        base, label = resolve_base(args, work)
        print(f"base: {label}; LoRA factorization, rank {args.rank}, threads {args.threads}")
        rows = lora_factor_rows(base, [int(k) for k in args.ks.split(",")], args.rank, args.density)
        print_lora_table(rows, args.rank)
        if args.json_out:
            args.json_out.write_text(json.dumps({"base": label, "rank": args.rank, "rows": rows}, indent=2) + "\n")
        shutil.rmtree(work, ignore_errors=True)
        return
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="merge-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    base, label = resolve_base(args, work)
    params = sum(t.numel() for f in base.glob("*.safetensors") for t in load_file(str(f)).values())
    print(f"base: {label} ({params / 1e6:.0f}M parameters) at {base}")
    ks = [int(k) for k in args.ks.split(",")]
    inputs = make_inputs(base, work, max(ks))
    print(f"built {max(ks)} inputs; torch threads per child: {args.threads}", flush=True)
    skipped = mergekit_available()
    rows = []
    for k in ks:
        baseline = launch("baseline", "average", base, inputs[:k], work / "out", args)
        for method in args.methods.split(","):
            ours = launch("ours", method, base, inputs[:k], work / "out", args)
            row = {"k": k, "method": method, "ours": ours, "baseline_average": baseline}
            if method in ("ties", "dare_ties") and skipped is None:
                row["mergekit"] = launch("mergekit", method, base, inputs[:k], work / "out", args)
            rows.append(row)
    print_table(rows, skipped)
    if args.json_out:
        args.json_out.write_text(json.dumps({"base": label, "parameters": params, "rows": rows,
                                             "mergekit_skipped": skipped}, indent=2) + "\n")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


def print_table(rows: list[dict], skipped: str | None) -> None:
    header = (f"{'k':>2} {'method':<8} {'ours s':>7} {'ours MB':>8} {'base s':>7} {'base MB':>8} {'MB ratio':>9} "
              f"{'mergekit':>16}")
    print(header)
    print("-" * len(header))
    for row in rows:
        ours, base = row["ours"], row["baseline_average"]
        mk = row.get("mergekit")
        mk_text = f"{mk['seconds']:.1f}s {mk['peak_rss_mb']:.0f}MB" if mk else "skipped"
        print(f"{row['k']:>2} {row['method']:<8} {ours['seconds']:>7.1f} {ours['peak_rss_mb']:>8.0f} "
              f"{base['seconds']:>7.1f} {base['peak_rss_mb']:>8.0f} {ours['peak_rss_mb'] / base['peak_rss_mb']:>9.2f} "
              f"{mk_text:>16}")
    print("baseline = load every state dict and average (in memory); MB = peak RSS (VmHWM) of the child;\n"
          "MB ratio = ours / baseline; seconds = the merge call only")
    if skipped:
        print(f"mergekit comparison skipped: cannot import mergekit.merge ({skipped})")


if __name__ == "__main__":
    main()
