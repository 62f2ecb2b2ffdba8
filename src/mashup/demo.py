"""`mashup demo`: a real, offline Mashup-vs-scratch comparison with SmolLM2-135M on a CPU.

The demo trains (or reuses from the cache) LoRA adapters on source tasks, then, for each seed,
trains on the held-out target twice with identical settings: from the merge of the selected
sources (Mashup) and from a fresh LoRA (scratch). Only the initialisation differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from mashup.config import DataConfig, EvalConfig, MergeConfig, Precision, RunConfig, SelectConfig, TrainConfig
from mashup.data.schema import sample
from mashup.data.target import TargetData, load_target
from mashup.data.tasks import is_task_name
from mashup.demo_report import print_tables, write_plot, write_report
from mashup.errors import MashupError
from mashup.evaluation import evaluate
from mashup.atomic_dir import require_free_output
from mashup.io import atomic_output_dir, write_json
from mashup.library import Library
from mashup.models import default_device, resolve_precision
from mashup.named_models import cache_root
from mashup.progress import training_bars
from mashup.run import run
from mashup.training import INIT_WEIGHTS
from mashup.verbs import load_eval_model, train_in
from mashup.provenance import write_version
from mashup.workspace import Workspace, open_workspace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSettings:
    """The demo's budget, chosen to fit 15 minutes on 2 CPU cores (see the README)."""

    base: str = "smollm2-135m"
    target: str = "arc_easy"
    sources: tuple[str, ...] = ("sciq", "openbookqa", "commonsense_qa")
    scoring: str = "cloze"
    max_length: int = 96
    source_steps: int | None = 12  # None: one epoch over the source's train split
    source_batch_size: int = 16
    source_lr: float = 1e-3
    steps: int | None = 12  # None: one epoch over the target's train split
    eval_every: int | None = 4  # None: every 10% of the steps
    lr: float = 1e-3
    batch_size: int = 8
    test_examples: int | None = 100  # None: the whole test split
    select_samples: int = 48
    k: int = 2
    seeds: tuple[int, ...] = (0, 1)

    def data(self, task: str) -> DataConfig:
        return DataConfig(data=task, scoring=self.scoring, max_length=self.max_length,  # type: ignore[arg-type]
                          max_test_examples=self.test_examples)

    def train(self, seed: int) -> TrainConfig:
        """Both arms on the target: identical settings, only the initialisation differs."""
        return TrainConfig(mode="lora", lr=self.lr, max_steps=self.steps, eval_every=self.eval_every,
                           batch_size=self.batch_size, seed=seed)

    def run_config(self, seed: int, library: Path, out: Path, precision: str) -> RunConfig:
        """One seed of the comparison as a `mashup run`: nothing is registered, so the library stays as built."""
        return RunConfig(base=self.base, data=self.data(self.target), library=str(library), out=str(out),
                         baseline=True, add_to_library=False, precision=precision,  # type: ignore[arg-type]
                         select=SelectConfig(samples=self.select_samples, k=self.k, seed=0),
                         merge=MergeConfig(method="average"), train=self.train(seed),
                         eval=EvalConfig(batch_size=16))

    def source_train(self) -> TrainConfig:
        return TrainConfig(mode="lora", lr=self.source_lr, max_steps=self.source_steps,
                           batch_size=self.source_batch_size, seed=0)

    def library_key(self, precision: str) -> str:
        """Names the cached source library: sources trained in bf16 differ from fp32 ones, so each
        precision keeps its own (an fp32 demo must not reuse a bf16 run's sources, or vice versa)."""
        fields = (self.base, self.scoring, self.max_length, self.source_steps, self.source_lr,
                  self.source_batch_size, precision)
        return hashlib.sha256(repr(fields).encode()).hexdigest()[:10]


def build_source_library(settings: DemoSettings, workspace: Workspace, console: Console) -> Library:
    """Train one LoRA per source task (once; cached by settings) and register them in a demo library."""
    root = cache_root() / "demo" / f"sources-{settings.library_key(workspace.precision)}"
    library = Library(root / "library")
    trained = library.list()
    for task in settings.sources:
        if any(r.task == task for r in trained):  # a named task: known without loading it
            continue
        source = load_target(settings.data(task))
        if any(r.data_fingerprint == source.fingerprint for r in trained):  # a data file: known by its content
            continue

        def register(final: Path, source: TargetData = source) -> None:  # part of the commit: all or nothing
            library.add([final / "adapter"], task=source.name, base=settings.base,
                        init_reference=str(final / INIT_WEIGHTS), metadata={"source": "mashup demo"},
                        data_fingerprint=source.fingerprint,
                        lineage={"trained_on": {"task": source.name, "data_fingerprint": source.fingerprint}})

        final = root / _source_dir(task, source)
        with atomic_output_dir(final, overwrite=True, on_commit=register) as tmp, training_bars(console) as stage:
            # no held-out curve for a source: its relevance is measured by selection on the target
            train_in(workspace, source, settings.source_train(), EvalConfig(max_examples=0), tmp,
                     progress=stage(f"source {task}"), final_dir=final)
    return library


def _source_dir(task: str, source: TargetData) -> str:
    """The cache dir name of a source's adapter: a data file's path would lead out of the cache (an absolute one
    replaced by the output dir itself), so a file source is named by its task name and content."""
    return task if is_task_name(task) else f"{source.name}-{source.fingerprint[:12]}"


def _zero_shot(settings: DemoSettings, workspace: Workspace, target: TargetData, first_run: dict[str, Any],
               run_dir: Path) -> dict[str, Any]:
    """Base and merged init on the selection sample and the test split, evaluated apart from the runs.

    The test accuracies are both arms' step 0; computing them here, independently of the training
    loop's own step-0 evaluation, lets the report (and the tests) check that the two agree.
    """
    scores = json.loads((run_dir / f"seed{settings.seeds[0]}" / "scores.json").read_text())
    sample_requests = workspace.encode(sample(target.train, settings.select_samples, 0), target.template)
    test_requests = workspace.encode(target.test, target.template)
    evaluations = {}
    for name, adapter in (("base", None), ("merged", run_dir / f"seed{settings.seeds[0]}" / "merged")):
        model = load_eval_model(workspace, adapter=adapter)
        evaluations[name] = [evaluate(model, requests, workspace.settings(16)) for requests in
                             (sample_requests, test_requests)]
    return {"ranking": scores["ranking"], "selected": first_run["selected"],
            "tasks": {s["id"]: s["task"] for s in scores["ranking"]},
            "base": evaluations["base"][1].accuracy, "merged": evaluations["merged"][1].accuracy,
            "base_sample": evaluations["base"][0].to_dict(), "merged_sample": evaluations["merged"][0].to_dict()}


def _seconds(runs: list[dict[str, Any]], source_library: float) -> dict[str, float]:
    """Time per stage over all seeds; selection as a cold selection would cost (cached scores' recorded time)."""
    first = runs[0]["seconds"]
    return {"source_library": source_library, "selection": first["selection_uncached"], "merge": first["merge"],
            "mashup_arms_train_and_eval": sum(r["mashup"]["train_seconds"] + r["mashup"]["eval_seconds"] for r in runs),
            "scratch_arms_train_and_eval": sum(r["scratch"]["train_seconds"] + r["scratch"]["eval_seconds"]
                                               for r in runs)}


def check_demo_options(settings: DemoSettings, out: Path, precision: Precision | None) -> None:
    """Refuse bad options before any work (the base's conversion and the source library take minutes).

    A seed given twice would rerun into its own seed dir and fail only after the first run; an existing --out
    would be refused only when the results are placed.
    """
    repeated = sorted({seed for seed in settings.seeds if settings.seeds.count(seed) > 1})
    if repeated:
        raise MashupError(f"seed {', '.join(map(str, repeated))} given more than once", "--seed", "give each seed once")
    if not settings.seeds:
        raise MashupError("no seeds to run", "--seed", "give at least one --seed")
    require_free_output(out)
    resolve_precision(precision, default_device())


def run_demo(out: Path | None = None, *, seeds: list[int] | None = None, settings: DemoSettings | None = None,
             console: Console | None = None, precision: Precision | None = None) -> dict[str, Any]:
    """Run the whole demo; returns the summary written to ``<run dir>/summary.json``.

    Each seed is one ``mashup run`` (select, merge, train from the merge and from scratch) on the demo's
    source library; the first seed pays for selection, the later ones reuse its cached scores.
    """
    settings = settings or DemoSettings()
    if seeds:
        settings = DemoSettings(**{**asdict(settings), "seeds": tuple(seeds)})
    console = console or Console(stderr=True)
    out = Path(out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S"))
    check_demo_options(settings, out, precision)
    started = time.perf_counter()
    workspace = open_workspace(settings.base, settings.data(settings.target), precision)
    library = build_source_library(settings, workspace, console)
    source_seconds = time.perf_counter() - started
    target = load_target(settings.data(settings.target))
    with atomic_output_dir(out) as run_dir:
        runs = []
        for seed in settings.seeds:
            with training_bars(console) as stage:
                runs.append(run(settings.run_config(seed, library.directory, run_dir / f"seed{seed}",
                                                    workspace.precision), stage))
        console.print("selected: " + ", ".join(f"{library.get(i).task} ({i})" for i in runs[0]["selected"]))
        summary = {
            "settings": asdict(settings), "target": target.name, "target_source": target.source,
            "precision": workspace.precision, "n_train": len(target.train), "n_test": len(target.test),
            "zero_shot": _zero_shot(settings, workspace, target, runs[0], run_dir),
            "seeds": [{"seed": seed, "mashup": r["mashup"], "scratch": r["scratch"], "parity": r["parity"]}
                      for seed, r in zip(settings.seeds, runs)],
            "seconds": {**_seconds(runs, source_seconds), "total": time.perf_counter() - started},
        }
        write_json(run_dir / "summary.json", summary)
        write_version(run_dir)
        write_plot(summary, run_dir / "accuracy.png")
        write_report(summary, run_dir / "report.md")
    print_tables(summary, Console())
    console.print(f"run dir: {out}  (report.md, accuracy.png, summary.json)")
    return summary
