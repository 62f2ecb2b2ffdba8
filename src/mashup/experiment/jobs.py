"""The work behind each unit, as self-contained picklable jobs that an executor can run anywhere.

Each job is a typed spec; its key is a digest of everything that determines its result, so equal work
(e.g. two selection methods that pick the same checkpoints) is computed once. :func:`execute_job`
writes the job's outputs into ``<root>/artifacts/<kind>-<key>`` through an atomic rename and returns
the result with the outputs' hashes. Every job reuses the package's own steps: ``select_checkpoints`` (over the
candidates it finds once), ``merge_checkpoints``, ``train_in``, ``evaluate`` and, for a source, its registration in
the experiment's own library (``own_library.register_source``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

from pydantic import Field, field_validator

from mashup.config import DataConfig, EvalConfig, MergeConfig, SelectConfig, StageConfig, TrainConfig, TrainMode
from mashup.data.target import TargetData, load_target
from mashup.errors import LibraryError, MashupError
from mashup.evaluation import EvalResult, evaluate
from mashup.experiment.manifest import RESULT, scan
from mashup.experiment.own_library import register_source
from mashup.experiment.records import finished_result
from mashup.io import atomic_output_dir, write_json
from mashup.training import INIT_WEIGHTS, init_lora_shape
from mashup.workspace import Workspace, open_workspace


class Job(StageConfig):
    """What every job shares: where the experiment lives (not part of the key) and the base model.

    ``ADDED_FIELDS`` names fields added after records were written: each is in the key only when it is not
    None, so a job that leaves one at None keeps the key (and the valid records) it had before the field existed.
    """

    root: str = Field(description="the experiment dir; artifacts go under <root>/artifacts")
    base: str
    precision: str = Field(description="resolved: fp32 or bf16 (part of the key: it changes the numbers)")
    data: DataConfig
    eval_batch_size: int = 16

    NOT_IN_KEY: ClassVar[frozenset[str]] = frozenset({"root"})
    ADDED_FIELDS: ClassVar[frozenset[str]] = frozenset()

    def key(self) -> str:
        unset = {name for name in self.ADDED_FIELDS if getattr(self, name) is None}
        spec = self.model_dump(mode="json", exclude=set(self.NOT_IN_KEY) | unset)
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    @property
    def artifact(self) -> str:
        return f"{self.kind}-{self.key()[:16]}"  # type: ignore[attr-defined]

    def resolved_spec(self) -> dict[str, Any]:
        """The job as its unit's record shows it: every setting as the job applies it (not part of the key)."""
        return self.model_dump(mode="json", exclude={"root", "initial"})


class EvalJob(Job):
    """Zero-shot accuracy of the base on the test split (the scratch arms' step 0)."""

    kind: Literal["eval"] = "eval"


class SelectJob(Job):
    """Score every candidate in the library on a seeded sample of the target's train split (uncached)."""

    kind: Literal["select"] = "select"
    library: str = Field(description="library dir; a relative one is inside the experiment dir")
    library_digest: str = Field(description="the candidates' checkpoints (digests): a changed library reselects")
    sources: list[str] | None = Field(None, description="the ids to rank: the sources this plan trained (a dir "
                                      "reused with another config keeps others'); None: all of a given library")
    samples: int
    seed: int
    mode: TrainMode
    merges: list[MergeConfig] | None = Field(None, description="the merges every ranked checkpoint must be "
                                             "mergeable under (a given library: the arms' and the grid's); "
                                             "None: mashup select's default alone (average)")

    ADDED_FIELDS: ClassVar[frozenset[str]] = frozenset({"merges"})

    @field_validator("merges")
    @classmethod
    def _default_as_none(cls, merges: list[MergeConfig] | None) -> list[MergeConfig] | None:
        # the default spelled out is the default: it keeps the key selections under it were recorded with
        return None if merges == [MergeConfig()] else merges

    def merge_configs(self) -> list[MergeConfig]:
        """The merges the ranked checkpoints must all be mergeable under, in the order they filter."""
        return self.merges or [MergeConfig()]

    def resolved_spec(self) -> dict[str, Any]:
        # ``merges`` is None in the key when it is the default (the key records had before the field existed);
        # a record shows the merges selection filtered under, not that null
        return {**super().resolved_spec(), "merges": [m.model_dump(mode="json") for m in self.merge_configs()]}


class MergeJob(Job):
    """Merge the chosen checkpoints and evaluate the merged init (the 'Mashup at init' figures)."""

    kind: Literal["merge"] = "merge"
    library: str
    checkpoint_ids: list[str]
    checkpoint_digests: list[str]
    merge: MergeConfig


class TrainJob(Job):
    """Train one arm at one learning rate and seed: a test-split curve, then validation accuracy at the end."""

    kind: Literal["train"] = "train"
    train: TrainConfig
    init: str | None = Field(None, description="merge artifact to start from; None: a fresh LoRA / the base")
    initial: dict[str, Any] | None = Field(None, description="the init's test evaluation, reused as step 0")
    keep_weights: bool = False

    NOT_IN_KEY: ClassVar[frozenset[str]] = frozenset({"root", "initial"})  # ``initial`` follows from ``init``


class SourceJob(Job):
    """Register a scratch run's weights in the experiment's library as the source checkpoint of its task."""

    kind: Literal["source"] = "source"
    library: str
    train_artifact: str
    mode: TrainMode
    lr: float
    seed: int


AnyJob = Union[EvalJob, SelectJob, MergeJob, TrainJob, SourceJob]


def execute_job(job: AnyJob) -> dict[str, Any]:
    """Run a job (or find its finished artifact) and return its result, output hashes, the artifact's manifest
    (see manifest.py) and wall seconds."""
    artifact = Path(job.root) / "artifacts" / job.artifact
    start = time.perf_counter()
    result = finished_result(artifact)  # computed before (by an equal job, or a run killed before recording)
    reused = result is not None
    if result is None:
        with atomic_output_dir(artifact) as tmp:
            result = _RUNNERS[job.kind](job, tmp)
            write_json(tmp / RESULT, result)
    outputs, manifest = scan(artifact)
    return {"result": result, "outputs": outputs, "manifest": manifest, "reused": reused,
            "seconds": time.perf_counter() - start}


@functools.lru_cache(maxsize=4)
def _workspace(base: str, scoring: str, max_length: int, precision: str) -> Workspace:
    return open_workspace(base, DataConfig(data="-", scoring=scoring, max_length=max_length),  # type: ignore[arg-type]
                          precision)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=16)
def _target(data_json: str) -> TargetData:
    return load_target(DataConfig.model_validate_json(data_json))


def _context(job: Job) -> tuple[Workspace, TargetData]:
    return (_workspace(job.base, job.data.scoring, job.data.max_length, job.precision),
            _target(job.data.model_dump_json()))


def _evaluate_test(workspace: Workspace, target: TargetData, model: Any, batch_size: int) -> dict[str, Any]:
    """An init's test figures: the 'at init' numbers, and step 0 of every run that starts from it."""
    return {"test": evaluate(model, workspace.encode(target.test, target.template),
                             workspace.settings(batch_size)).to_dict()}


def _load_trained(workspace: Workspace, weights: Path, kind: str) -> Any:
    """The base with a LoRA adapter dir, or a full model dir, ready to evaluate."""
    from mashup.verbs import load_eval_model

    return load_eval_model(workspace, **({"adapter": weights} if kind == "lora" else {"model_dir": weights}))


def _run_eval(job: EvalJob, tmp: Path) -> dict[str, Any]:
    from mashup.verbs import load_eval_model

    workspace, target = _context(job)
    return _evaluate_test(workspace, target, load_eval_model(workspace), job.eval_batch_size)


def _run_select(job: SelectJob, tmp: Path) -> dict[str, Any]:
    from mashup.candidates import describe_shortage, find_mergeable_candidates, trained_on
    from mashup.data.schema import sample
    from mashup.library import Library
    from mashup.library.identity import base_identity
    from mashup.run import selection_timing
    from mashup.selection import select_checkpoints

    workspace, target = _context(job)
    start = time.perf_counter()  # as `mashup run` times its selection: the workspace already open
    library = Library(Path(job.root) / job.library)
    # leaving the target's own source out is the protocol, not news (it is recorded as "excluded"): no hint
    found = find_mergeable_candidates(library, job.base, job.mode, target, job.merge_configs(), among=job.sources,
                                      base_id=base_identity(workspace.base_dir))
    shortage = describe_shortage(found, 1, job.mode, job.base)
    if shortage:
        raise LibraryError(shortage, str(library.directory), "add checkpoints or change the merge settings")
    registered = {r.id: r for r in library.list()}
    leaked = [r.id for r in found.records if trained_on(r, target, registered)]
    if leaked:  # find_candidates excludes them; this guards the experiment's honesty against any future change there
        raise MashupError(f"selection for '{target.name}' would rank checkpoints trained on it: {leaked}",
                          str(library.directory))
    # scored as ``mashup select`` scores, over exactly the candidates found (not found again); one uncached scoring
    # serves the arms by loss and by accuracy
    config = SelectConfig(samples=job.samples, k=1, metric="loss", with_accuracy=True, seed=job.seed, cache=False)
    requests = workspace.encode(sample(target.train, job.samples, job.seed), target.template)
    ranking = select_checkpoints(workspace, found.records, requests, config, library.directory).ranking
    return {"ranking": [s.to_dict() for s in ranking], "excluded": found.excluded, "rejected": found.rejected,
            "n": len(requests), **selection_timing(time.perf_counter() - start, ranking)}


def _run_merge(job: MergeJob, tmp: Path) -> dict[str, Any]:
    from mashup.library import Library
    from mashup.merging import merge_checkpoints
    from mashup.verbs import merge_statistics_batches

    workspace, target = _context(job)
    library = Library(Path(job.root) / job.library)
    records = [library.get(i) for i in job.checkpoint_ids]
    if [r.sha256 for r in records] != job.checkpoint_digests:
        raise MashupError("a selected checkpoint changed after selection", str(library.directory),
                          "rerun the experiment")
    report = merge_checkpoints(records, job.merge, tmp / "merged", base_model_dir=workspace.base_dir,
                               calibration_batches=merge_statistics_batches(job.merge, workspace, target))
    model = _load_trained(workspace, tmp / "merged", records[0].kind)
    return {"merge_seconds": report.seconds, "merge_report": report.to_dict(), "checkpoint_ids": job.checkpoint_ids,
            "tasks": [r.task for r in records], "lora_shape": init_lora_shape(tmp / "merged"),
            **_evaluate_test(workspace, target, model, job.eval_batch_size)}


def early_drop(curve: list[dict[str, Any]], total_steps: int) -> dict[str, Any]:
    """The largest fall below the init's accuracy in the first half of training (0 when it never falls).

    A merged init that collapses in its first steps signals a learning rate too high for it.
    """
    init = curve[0]["accuracy"]
    early = [p for p in curve[1:] if p["step"] <= total_steps / 2] or curve[1:2]
    worst = min(early, key=lambda p: p["accuracy"], default=None)
    drop = max(0.0, init - worst["accuracy"]) if worst else 0.0
    return {"drop": drop, "step": worst["step"] if worst and drop > 0 else None, "init_accuracy": init}


def _run_train(job: TrainJob, tmp: Path) -> dict[str, Any]:
    from mashup.verbs import train_in

    workspace, target = _context(job)
    init = Path(job.root) / "artifacts" / job.init / "merged" if job.init else None
    initial = EvalResult(**job.initial) if job.initial else None
    summary = train_in(workspace, target, job.train, EvalConfig(split="test", batch_size=job.eval_batch_size), tmp,
                       init, initial=initial, final_dir=Path(job.root) / "artifacts" / job.artifact)
    weights = tmp / Path(summary.weights_dir).name  # the summary names the dir tmp becomes
    model = _load_trained(workspace, weights, job.train.mode)
    validation = evaluate(model, workspace.encode(target.validation, target.template),
                          workspace.settings(job.eval_batch_size))
    if not job.keep_weights:  # only the runs that may become sources keep their weights (disk)
        shutil.rmtree(weights)
        (tmp / INIT_WEIGHTS).unlink(missing_ok=True)
    result = summary.result
    curve = [p.__dict__ for p in result.curve]
    return {"curve": curve, "total_steps": result.total_steps, "train_seconds": result.train_seconds,
            "eval_seconds": result.eval_seconds, "test": {"accuracy": result.final.accuracy, "loss": result.final.loss},
            "validation": validation.to_dict(), "train_config": summary.config,
            "early_drop": early_drop(curve, result.total_steps), "weights": weights.name if job.keep_weights else None}


def random_choice(candidates: list[str], k: int, task: str, seed: int) -> list[str]:
    """The random-selection arm's checkpoints: k of the candidates, fixed by the task and the seed."""
    rng = random.Random(int(hashlib.sha256(f"{task}/{seed}".encode()).hexdigest()[:16], 16))
    return sorted(rng.sample(sorted(candidates), k))


_RUNNERS = {"eval": _run_eval, "select": _run_select, "merge": _run_merge, "train": _run_train,
            "source": register_source}
