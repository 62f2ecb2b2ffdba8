"""The CLI verbs as plain typed functions: select, merge, train, evaluate."""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from mashup.batching import ScoredSequence, collate
from mashup.config import DataConfig, EvalConfig, MergeConfig, Precision, SelectConfig, TrainConfig, save_config
from mashup.data.schema import sample
from mashup.data.target import TargetData, load_target, recorded_data_config
from mashup.errors import DataError, LibraryError, MashupError
from mashup.evaluation import EvalResult, evaluate
from mashup.io import atomic_output_dir, write_json
from mashup.candidates import INCLUDE_TARGET_HINT, describe_shortage, find_candidates
from mashup.library import CheckpointRecord, Library, check_kind
from mashup.library.identity import base_identity
from mashup.model_checks import require_registered_dir
from mashup.models import attach_adapter, load_model, resolve_base_dir
from mashup.scoring import CheckpointScore
from mashup.selection import select_checkpoints
from mashup.selection.driver import ProgressFn as SelectProgressFn
from mashup.training import (INIT_WEIGHTS, CurvePoint, ProgressFn, TrainResult, prepare_model, resolve_train_config,
                             save_init_adapter, save_trained, total_steps, train)
from mashup.provenance import write_version
from mashup.workspace import Workspace, open_workspace

logger = logging.getLogger(__name__)


@dataclass
class SelectResult:
    ranking: list[CheckpointScore]
    selected: list[str]
    rejected: list[dict[str, str]]
    excluded: list[dict[str, str]]  # checkpoints trained on the target itself, left out unless asked for
    metric: str
    n: int
    seconds: float
    formulation: str = ""
    precision: str = "fp32"
    stats: dict = field(default_factory=dict)  # what selection cost (mashup.selection.SelectionStats)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ranking"] = [s.to_dict() for s in self.ranking]
        return data


def select(base: str, data: DataConfig, config: SelectConfig, library_dir: str | Path | None = None, *,
           kind: str = "lora", merge: MergeConfig | None = None, workspace: Workspace | None = None,
           target: TargetData | None = None, allow_pickle: bool = False,
           precision: Precision | None = None, progress: SelectProgressFn | None = None,
           among: Collection[str] | None = None, include_hint: str | None = INCLUDE_TARGET_HINT) -> SelectResult:
    """Score usable checkpoints on a seeded sample of the target's train split with the configured selector; rank.

    Usable (see mashup.candidates): fresh, on this base, not trained on the target, and mergeable under
    ``merge`` (default: MergeConfig()), so nothing is scored that the merge would refuse; ``among`` limits them
    to these ids and ``include_hint`` is what an exclusion's log line suggests (``find_candidates``). Scores are
    cached in the library (``config.cache``); ``progress(done, planned)`` follows the scoring. A checkpoint whose
    loss is not finite ranks last and is never selected: fewer than ``config.k`` finite ones is a ``LibraryError``.
    """
    from mashup.selection.api import select_top

    check_kind(kind)
    start = time.perf_counter()
    workspace = workspace or open_workspace(base, data, precision)
    target = target or load_target(data)
    library = Library.existing(library_dir)  # a given dir that is not a library: a typo, not an empty one
    candidates = find_candidates(library, base, kind, target, merge or MergeConfig(),
                                 base_id=base_identity(workspace.base_dir),
                                 include_target=config.include_target_checkpoints, among=among,
                                 include_hint=include_hint)
    shortage = describe_shortage(candidates, config.k, kind, base)
    if shortage:
        raise LibraryError(shortage, str(library.directory), "register more with `mashup library add`, lower --k, "
                           "or change the merge settings")
    if config.samples > len(target.train):  # the whole split is scored: a warning, as for a skipped checkpoint
        logger.warning("%s's train split has %d examples, fewer than the %d samples asked for: scoring all %d",
                       target.name, len(target.train), config.samples, len(target.train))
    requests = workspace.encode(sample(target.train, config.samples, config.seed), target.template)
    sample_info = {"target": target.name, "seed": config.seed, "formulation": workspace.formulation, "base": base}
    selection = select_checkpoints(workspace, candidates.records, requests, config, library.directory,
                                   allow_pickle=allow_pickle, progress=progress, sample_info=sample_info)
    ranking = selection.ranking
    selected = select_top(ranking, config.k, library.directory)  # a loss that is not finite is never selected
    return SelectResult(ranking=ranking, selected=selected, rejected=candidates.rejected,
                        excluded=candidates.excluded, metric=config.metric, n=len(requests),
                        seconds=time.perf_counter() - start, formulation=workspace.formulation,
                        precision=workspace.precision, stats=selection.stats.to_dict())


def calibration_batches(workspace: Workspace, target: TargetData, n: int, seed: int, batch_size: int = 8
                        ) -> list[dict[str, torch.Tensor]]:
    """Batches of the target's train split (answer tokens labelled) for Fisher / RegMean statistics."""
    requests = workspace.encode(sample(target.train, n, seed), target.template)
    batches = []
    for start in range(0, len(requests), batch_size):
        pairs = [r.training_pair() for r in requests[start:start + batch_size]]
        batch = collate([ScoredSequence(tuple(ids), 1) for ids, _ in pairs], workspace.tokenizer.pad_token_id,
                        torch.device("cpu"))
        labels = torch.full_like(batch["input_ids"], -100)
        for row, (ids, lab) in enumerate(pairs):
            labels[row, labels.shape[1] - len(lab):] = torch.tensor(lab)
        batches.append({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels})
    return batches


STATISTICS_METHODS = frozenset({"fisher", "regmean"})


def merge_statistics_batches(config: MergeConfig, workspace: Workspace, target: TargetData
                             ) -> list[dict[str, torch.Tensor]] | None:
    """Calibration batches for methods that need data statistics (Fisher, RegMean); None for the rest."""
    if config.method not in STATISTICS_METHODS:
        return None
    return calibration_batches(workspace, target, config.fisher_samples, config.seed)


def merge(checkpoint_ids: Sequence[str], config: MergeConfig, out: str | Path, library_dir: str | Path | None = None,
          *, base: str | None = None, data: DataConfig | None = None, overwrite: bool = False,
          export_mergekit: str | Path | None = None):
    """Merge catalog checkpoints into one PEFT adapter dir (LoRA) or HF model dir (full).

    ``base`` (default: the checkpoints' own) must be their base by content. ``export_mergekit`` also writes the
    equivalent mergekit YAML there (full fine-tunes only), naming the local base dir the merge read; it is written
    as the merge commits, and a failed write leaves no merge behind.
    """
    from mashup.merging import export_mergekit_yaml, merge_checkpoints
    from mashup.merging.api import base_identity_of
    from mashup.merging.compat import check_base
    from mashup.merging.plan import build_plan
    from mashup.merging.mergekit_yaml import require_free_export

    library = Library.existing(library_dir)
    records = [library.get(i) for i in checkpoint_ids]
    _refuse_stale(library, records)
    build_plan(records, config)  # the records' own refusals (repeats, kinds, bases) before the base is read
    if export_mergekit is not None:  # an unsupported or unwritable export fails before anything is merged
        export_mergekit_yaml(records, config, base or records[0].base_model)
        require_free_export(Path(export_mergekit), Path(out))
    spelled, base = base, base or records[0].base_model
    needs_statistics = config.method in STATISTICS_METHODS
    base_dir = resolve_base_dir(base) if records[0].kind == "full" or needs_statistics else None
    identity = base_identity_of(base, base_dir)
    if spelled is not None or base_dir is not None:  # task vectors, config and statistics come from this base
        check_base(records, base, identity, given=spelled is not None)
    batches, calibration = _calibration(config, base, data) if needs_statistics else (None, None)
    on_commit = None if export_mergekit is None else _mergekit_export(
        records, config, Path(export_mergekit), str(base_dir.absolute()) if base_dir else base)
    return merge_checkpoints(records, config, Path(out), base_model_dir=base_dir, calibration_batches=batches,
                             overwrite=overwrite, base=spelled, calibration=calibration, on_commit=on_commit,
                             base_id=identity)


def _refuse_stale(library: Library, records: Sequence[CheckpointRecord]) -> None:
    """Refuse a stale checkpoint: select leaves these out; merging one would record a lineage of bytes that are not
    there."""
    stale = library.fresh(records)[1]
    if stale:
        record, reason = stale[0]
        require_registered_dir(record, library.directory)  # a dir that is gone: nothing there to register again
        raise LibraryError(f"checkpoint {record.id} is stale: {reason}", str(library.directory),
                           f"register it again (`mashup library remove {record.id}`, then `library add`) or merge "
                           "others")


def _calibration(config: MergeConfig, base: str, data: DataConfig | None
                 ) -> tuple[list[dict[str, torch.Tensor]] | None, dict[str, Any]]:
    """Fisher / RegMean's calibration batches from the target's train split, and how the merge report describes
    them (target, fingerprint, examples, seed, scoring)."""
    if data is None:
        raise MashupError(f"merge method '{config.method}' needs target data", None, "pass --data TARGET")
    workspace, target = open_workspace(base, data), load_target(data)
    batches = merge_statistics_batches(config, workspace, target)
    return batches, {"target": target.name, "fingerprint": target.fingerprint,
                     "examples": sum(int(b["input_ids"].shape[0]) for b in batches or []), "seed": config.seed,
                     "scoring": workspace.formulation}


def _mergekit_export(records: Sequence[CheckpointRecord], config: MergeConfig, path: Path, base: str
                     ) -> Callable[[Path], None]:
    """The merge's on-commit hook: write the equivalent mergekit YAML, naming ``base`` (the local base dir read), to
    ``path``."""
    from mashup.merging import export_mergekit_yaml
    from mashup.merging.mergekit_yaml import write_export

    text = export_mergekit_yaml(records, config, base)

    def write(_: Path) -> None:
        write_export(path, text)

    return write


@dataclass
class TrainSummary:
    out: str
    weights_dir: str
    result: TrainResult
    formulation: str
    precision: str
    config: dict = field(default_factory=dict)  # the resolved TrainConfig it trained with

    def to_dict(self) -> dict:
        return {"out": self.out, "weights_dir": self.weights_dir, "formulation": self.formulation,
                "precision": self.precision, "train_config": self.config, **self.result.to_dict()}


def write_curve(result: TrainResult, out_dir: Path) -> None:
    rows = [asdict(p) for p in result.curve]
    write_json(out_dir / "curve.json", rows)
    with open(out_dir / "curve.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(CurvePoint)])
        writer.writeheader()
        writer.writerows(rows)


def train_in(workspace: Workspace, target: TargetData, config: TrainConfig, eval_config: EvalConfig, out_dir: Path,
             init: Path | None = None, progress: ProgressFn | None = None, allow_pickle: bool = False,
             initial: EvalResult | None = None, *, final_dir: Path) -> TrainSummary:
    """Train into an existing (temporary) dir: weights, init reference, curve, config and version; the summary
    (and result.json) names ``final_dir``, what ``out_dir`` becomes once committed (``out_dir`` if already final).

    Starting from an adapter, its LoRA shape (r, alpha, targets, dropout, rsLoRA) overrides ``config``'s,
    and the config saved beside the weights is the one actually trained with (lr and eval_every resolved).
    """
    config = resolve_train_config(config, init)
    model = prepare_model(workspace.base_dir, config, init, allow_pickle).to(workspace.device)
    if config.mode == "lora":
        save_init_adapter(model, out_dir / INIT_WEIGHTS)
    eval_examples = eval_split(target, eval_config)
    train_requests = workspace.encode(target.train, target.template)
    config = config.resolved(total_steps(len(train_requests), config))  # the lr and eval_every written below
    result = train(model, train_requests, workspace.encode(eval_examples, target.template), config,
                   workspace.settings(eval_config.batch_size), progress, initial)
    weights_dir = out_dir / ("adapter" if config.mode == "lora" else "model")
    save_trained(model, weights_dir, workspace.base, workspace.tokenizer)
    write_curve(result, out_dir)
    save_config(config, out_dir / "train_config.yaml")
    write_version(out_dir)
    summary = TrainSummary(str(final_dir), str(final_dir / weights_dir.name), result, workspace.formulation,
                           workspace.precision, config.model_dump(mode="json"))
    write_json(out_dir / "result.json", summary.to_dict())
    return summary


def train_model(base: str, data: DataConfig, config: TrainConfig, out: str | Path, *, init: str | Path | None = None,
                eval_config: EvalConfig | None = None, progress: ProgressFn | None = None,
                allow_pickle: bool = False, overwrite: bool = False,
                precision: Precision | None = None) -> TrainSummary:
    """Fine-tune (LoRA or full) from the base or ``init``; the output dir appears only when complete."""
    workspace = open_workspace(base, data, precision)
    target = load_target(data)
    with atomic_output_dir(Path(out), overwrite=overwrite) as tmp:
        summary = train_in(workspace, target, config, eval_config or EvalConfig(), tmp,
                           Path(init) if init else None, progress, allow_pickle, final_dir=Path(out).absolute())
        save_config(recorded_data_config(data), tmp / "data_config.yaml")
    return summary


def evaluate_model(base: str, data: DataConfig, *, adapter: str | Path | None = None,
                   model_dir: str | Path | None = None, config: EvalConfig | None = None,
                   allow_pickle: bool = False, precision: Precision | None = None) -> EvalResult:
    """Multiple-choice accuracy of the base, a LoRA adapter on it, or a full model dir."""
    config = config or EvalConfig()
    workspace = open_workspace(base, data, precision)
    target = load_target(data)
    examples = eval_split(target, config)  # a split the target lacks is said before the model loads
    model = load_eval_model(workspace, adapter=adapter, model_dir=model_dir, allow_pickle=allow_pickle)
    return evaluate(model, workspace.encode(examples, target.template), workspace.settings(config.batch_size))


def eval_split(target: TargetData, config: EvalConfig) -> list:
    """The examples an evaluation runs on: the configured split, capped with a fixed seed."""
    examples = {"train": target.train, "validation": target.validation, "test": target.test}[config.split]
    if not examples and config.max_examples != 0:
        raise DataError(f"the target '{target.name}' has no {config.split} split", target.source,
                        "carve one with --validation-size (validation_size under data: in a config file)"
                        if config.split == "validation"
                        else "check the data")
    return examples if config.max_examples is None else sample(examples, config.max_examples, 0)


def load_eval_model(workspace: Workspace, *, adapter: str | Path | None = None, model_dir: str | Path | None = None,
                    allow_pickle: bool = False) -> torch.nn.Module:
    """The base (or a full model dir), with an optional LoRA adapter, on the workspace's device; weights holding
    NaN or inf are refused (they would score as a loss of nan)."""
    model = load_model(Path(model_dir) if model_dir else workspace.base_dir, allow_pickle=allow_pickle)
    if adapter:
        model = attach_adapter(model, Path(adapter), trainable=False, allow_pickle=allow_pickle)
    return model.to(workspace.device)
