"""The CLI at library scale: each command run as a fresh process on N tiny adapters, start-up included.

The library holds N seeded noisy copies of one tiny random LoRA adapter (``--noise`` x each tensor's
std, so the ranking is close to arbitrary: this times the commands, it does not test the selectors).
Timed, in order: ``library add --recursive`` into an empty library; a 256-question cloze
``select --no-cache`` with each selector; ``select --selector halving`` with the cache on, twice (the
second scores nothing); then ``library list`` and ``library scores``, as a table and with ``--json``.
Each select's summary line (forward tokens against exhaustive scoring's) is printed beside its time.

    python benchmarks/cli_library.py --n 1000 --work-dir /tmp/cli-library --json-out cli-library.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SELECTORS = ("exhaustive", "halving", "prefilter+halving")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="adapters in the library")
    parser.add_argument("--noise", type=float, default=0.3, help="each copy's noise, in units of each tensor's std")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--work-dir", type=Path, required=True, help="adapters are kept here between runs")
    parser.add_argument("--json-out", type=Path)
    return parser.parse_args(argv)


def build(work: Path, n: int, noise: float) -> tuple[Path, Path, Path]:
    """The tiny base, a dir of ``n`` adapters (written once, kept) and a synthetic cloze target."""
    import torch
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(ROOT))
    from tests.conftest import write_mc_jsonl
    from tests.tiny import save_tiny_base, save_tiny_lora

    base, adapters = work / "base", work / "adapters"
    if not base.exists():
        save_tiny_base(base)
    first = adapters / "a0000"
    if not first.exists():
        save_tiny_lora(base, first, seed=0)
    weights = load_file(str(first / "adapter_model.safetensors"))
    for i in range(1, n):
        out = adapters / f"a{i:04d}"
        if (out / "adapter_model.safetensors").exists():
            continue
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(first / "adapter_config.json", out / "adapter_config.json")
        generator = torch.Generator().manual_seed(i)
        save_file({k: v + noise * v.std() * torch.randn(v.shape, generator=generator) for k, v in weights.items()},
                  str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return base, adapters, write_mc_jsonl(work / "target.jsonl", 400)


def run(args: list[str], env: dict[str, str]) -> tuple[float, str, list[str] | None]:
    """Seconds a fresh ``mashup`` process took, select's summary line and top k (empty and None for other
    commands)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mashup", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"mashup {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    summaries = [line for line in done.stderr.splitlines() if line.startswith("select")]
    selected = json.loads(done.stdout)["selected"] if args[0] == "select" else None
    return seconds, summaries[-1] if summaries else "", selected


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = args.work_dir.resolve()
    base, adapters, target = build(work, args.n, args.noise)
    library = work / "library"
    shutil.rmtree(library, ignore_errors=True)
    env = {**os.environ, "MASHUP_LIBRARY": str(library), "COLUMNS": "300"}  # summary lines unwrapped
    select = ["select", "--base", str(base), "--data", str(target), "--scoring", "cloze", "--samples",
              str(args.samples), "--json"]
    commands = [("library add --recursive", ["library", "add", str(adapters), "--recursive", "--task", "synth"])]
    commands += [(f"select --selector {s} --no-cache", [*select, "--selector", s, "--no-cache"]) for s in SELECTORS]
    commands += [("select --selector halving (cache on)", [*select, "--selector", "halving"]),
                 ("select --selector halving (cached repeat)", [*select, "--selector", "halving"])]
    commands += [(f"library {verb}{flag}", ["library", verb, *flag.split()]) for verb in ("list", "scores")
                 for flag in ("", " --json")]
    rows, exhaustive = [], None
    for label, command in commands:
        seconds, summary, selected = run(command, env)
        exhaustive = exhaustive or selected  # the first select is exhaustive scoring's
        agrees = selected is not None and set(selected) == set(exhaustive or [])
        same = "" if selected is None else f"  top-{len(selected)} set {'=' if agrees else '!='} exhaustive's"
        rows.append({"command": label, "seconds": round(seconds, 2), "summary": summary, "selected": selected})
        print(f"{label:<45} {seconds:7.2f} s  {summary}{same}", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps({"n": args.n, "noise": args.noise, "samples": args.samples,
                                             "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
