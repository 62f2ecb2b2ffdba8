"""`mashup demo`: a real, offline Mashup-vs-scratch comparison with SmolLM2-135M on a CPU.

The demo trains (or reuses from the cache) LoRA adapters on source tasks, then, for each seed,
trains on the held-out target twice with identical settings: from the merge of the selected
sources (Mashup) and from a fresh LoRA (scratch). Only the initialisation differs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from mashup.config import DataConfig, EvalConfig, MergeConfig, TrainConfig
from mashup.data.prompts import EncodedRequest
from mashup.data.schema import sample
from mashup.data.target import TargetData, load_target
from mashup.demo_report import write_plot, write_report, print_tables
from mashup.evaluation import EvalResult, evaluate
from mashup.io import atomic_output_dir, write_json
from mashup.library import CheckpointRecord, Library
from mashup.merging import merge_checkpoints
from mashup.named_models import cache_root
from mashup.progress import training_bars
from mashup.run import parity
from mashup.scoring import CheckpointScore, rank, score_checkpoints
from mashup.training import INIT_WEIGHTS
from mashup.verbs import load_eval_model, train_in
from mashup.workspace import Workspace, open_workspace, write_version

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

    def source_train(self) -> TrainConfig:
        return TrainConfig(mode="lora", lr=self.source_lr, max_steps=self.source_steps,
                           batch_size=self.source_batch_size, seed=0)

    def library_key(self) -> str:
        fields = (self.base, self.scoring, self.max_length, self.source_steps, self.source_lr,
                  self.source_batch_size)
        return hashlib.sha256(repr(fields).encode()).hexdigest()[:10]


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, start: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def build_source_library(settings: DemoSettings, workspace: Workspace, console: Console) -> Library:
    """Train one LoRA per source task (once; cached by settings) and register them in a demo library."""
    root = cache_root() / "demo" / f"sources-{settings.library_key()}"
    library = Library(root / "library")
    known = {r.task for r in library.list()}
    for task in settings.sources:
        if task in known:
            continue
        out = root / task
        with atomic_output_dir(out, overwrite=True) as tmp, training_bars(console) as stage:
            # no held-out curve for a source: its relevance is measured by selection on the target
            train_in(workspace, load_target(settings.data(task)), settings.source_train(), EvalConfig(max_examples=0),
                     tmp, progress=stage(f"source {task}"))
        library.add([out / "adapter"], task=task, base=settings.base, init_reference=str(out / INIT_WEIGHTS),
                    metadata={"source": "mashup demo"})
    return library


def evaluate_init(workspace: Workspace, request_sets: list[list], adapter: Path | None) -> list[EvalResult]:
    model = load_eval_model(workspace, adapter=adapter)
    return [evaluate(model, requests, workspace.settings(16)) for requests in request_sets]


def select_sources(settings: DemoSettings, workspace: Workspace, library: Library, target: TargetData
                   ) -> tuple[list[EncodedRequest], list[CheckpointScore], list[CheckpointRecord]]:
    """Rank the demo's sources by answer loss on a seeded sample of the target's train split."""
    records = [r for r in library.list() if r.task in settings.sources]
    sample_requests = workspace.encode(sample(target.train, settings.select_samples, 0), target.template)
    ranking = rank(score_checkpoints(workspace.base_dir, records, sample_requests, workspace.settings(16)), "loss")
    return sample_requests, ranking, [library.get(s.id) for s in ranking[:settings.k]]


def _zero_shot(settings: DemoSettings, workspace: Workspace, library: Library, target: TargetData,
               run_dir: Path, timer: Timer, console: Console) -> dict[str, Any]:
    """Selection on a train sample (timed as the method's cost), the merge, and zero-shot accuracies.

    Sources are compared on the selection sample (target train split), where selection already
    scored them; the base and the merged init also on the test split, as both arms' step 0.
    """
    start = time.perf_counter()
    sample_requests, ranking, selected = select_sources(settings, workspace, library, target)
    timer.add("selection", start)
    console.print("selected: " + ", ".join(f"{r.task} ({r.id})" for r in selected))
    start = time.perf_counter()
    merge_checkpoints(selected, MergeConfig(method="average"), run_dir / "merged")
    timer.add("merge", start)
    test_requests = workspace.encode(target.test, target.template)
    base_sample, base_test = evaluate_init(workspace, [sample_requests, test_requests], None)
    merged_sample, merged_test = evaluate_init(workspace, [sample_requests, test_requests], run_dir / "merged")
    return {"ranking": [s.to_dict() for s in ranking], "selected": [r.id for r in selected],
            "tasks": {score.id: library.get(score.id).task for score in ranking}, "base": base_test, "merged": merged_test,
            "base_sample": base_sample.to_dict(), "merged_sample": merged_sample.to_dict()}


def _train_arms(settings: DemoSettings, workspace: Workspace, target: TargetData, run_dir: Path,
                zero_shot: dict[str, Any], timer: Timer, console: Console) -> list[dict[str, Any]]:
    per_seed = []
    for seed in settings.seeds:
        arms = {}
        for arm, init, initial in (("mashup", run_dir / "merged", zero_shot["merged"]),
                                   ("scratch", None, zero_shot["base"])):
            out = run_dir / f"{arm}-seed{seed}"
            out.mkdir()
            start = time.perf_counter()
            with training_bars(console) as stage:
                arms[arm] = train_in(workspace, target, settings.train(seed),
                                     EvalConfig(), out, init, progress=stage(f"{arm} seed {seed}"),
                                     initial=initial).result
            timer.add(f"{arm}_arms_train_and_eval", start)
        per_seed.append({"seed": seed, "mashup": arms["mashup"].to_dict(), "scratch": arms["scratch"].to_dict(),
                         "parity": parity(arms["mashup"], arms["scratch"])})
    return per_seed


def run_demo(out: Path | None = None, *, seeds: list[int] | None = None, settings: DemoSettings | None = None,
             console: Console | None = None) -> dict[str, Any]:
    """Run the whole demo; returns the summary written to ``<run dir>/summary.json``."""
    settings = settings or DemoSettings()
    if seeds:
        settings = DemoSettings(**{**asdict(settings), "seeds": tuple(seeds)})
    console = console or Console(stderr=True)
    out = Path(out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S"))
    started, timer = time.perf_counter(), Timer()
    workspace = open_workspace(settings.base, settings.data(settings.target))
    library = build_source_library(settings, workspace, console)
    timer.add("source_library", started)
    target = load_target(settings.data(settings.target))
    with atomic_output_dir(out) as run_dir:
        zero_shot = _zero_shot(settings, workspace, library, target, run_dir, timer, console)
        per_seed = _train_arms(settings, workspace, target, run_dir, zero_shot, timer, console)
        summary = {
            "settings": asdict(settings), "target": target.name, "target_source": target.source,
            "n_train": len(target.train), "n_test": len(target.test),
            "zero_shot": {**zero_shot, "base": zero_shot["base"].accuracy, "merged": zero_shot["merged"].accuracy},
            "seeds": per_seed, "seconds": {**timer.seconds, "total": time.perf_counter() - started},
        }
        write_json(run_dir / "summary.json", summary)
        write_version(run_dir)
        write_plot(summary, run_dir / "accuracy.png")
        write_report(summary, run_dir / "report.md")
    print_tables(summary, Console())
    console.print(f"run dir: {out}  (report.md, accuracy.png, summary.json)")
    return summary
