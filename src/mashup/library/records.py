"""What the catalog knows about one checkpoint, and how it is read from disk."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mashup.errors import CheckpointError, MashupError
from mashup.io import TensorSpec, loaded_weight_files, sha256_files, stat_files, weight_files
from mashup.io.files import NOT_WEIGHTS, refuse_model_beside_adapter
from mashup.library.base_shapes import BaseShapes, all_shapes, all_specs, check_fits_base, check_lora_fits_base
from mashup.library.lora_config import (ADAPTER_CONFIG, LORA_SETTINGS, check_lora_dtypes, check_lora_shapes,
                                        check_peft_fields, lora_narrowing, lora_settings, narrowing_choice)
from mashup.library.lora_targets import check_lora_targets

Kind = Literal["lora", "full"]
MODEL_CONFIG = "config.json"
MERGE_REPORT = "merge_report.json"  # mashup.merging.api.REPORT_NAME (mashup.merging imports this module)


@dataclass
class CheckpointRecord:
    """One catalog entry. ``shapes`` maps tensor names to shapes as stored on disk."""

    id: str
    kind: Kind
    path: str
    sha256: str
    base_model: str
    architecture: str
    shapes: dict[str, list[int]]
    task: str | None = None
    lora_r: int | None = None
    lora_alpha: float | None = None
    target_modules: list[str] | None = None
    use_rslora: bool = False
    use_dora: bool = False
    init_reference: str | None = None  # weights the adapter started from, for task vectors
    metadata: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    file_stats: list[dict[str, Any]] = field(default_factory=list)  # per weight file, as hashed (io.stat_files)
    base_identity: str | None = None  # content digest of the base (library.identity), None if not resolvable
    data_fingerprint: str | None = None  # mashup.data.schema.examples_fingerprint of its training task
    lineage: dict[str, Any] = field(default_factory=dict)  # e.g. merged_from, trained_on, run
    # a LoRA's lora_config.NARROWING_FIELDS as registered; None for a full fine-tune, or a LoRA registered before
    # they were kept (then not compared)
    narrowing: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def merged_from(self) -> list[str]:
        """The ids its lineage says it was merged from (none where the lineage holds no list)."""
        parents = self.lineage.get("merged_from")
        return [str(i) for i in parents] if isinstance(parents, list) else []

    @property
    def lora_scale(self) -> float:
        """The factor PEFT applies to B @ A (alpha / r, or alpha / sqrt(r) with rslora)."""
        if self.lora_r is None or self.lora_alpha is None:
            raise CheckpointError("not a LoRA adapter", self.path)
        return self.lora_alpha / (self.lora_r**0.5 if self.use_rslora else self.lora_r)

    @property
    def applies(self) -> str | None:
        """A LoRA's ``lora_settings`` as one string (None for a full fine-tune): what, beside the weights' digest,
        a cached score or prefilter value depends on, since the digest covers the weights alone."""
        if self.kind != "lora":
            return None
        return json.dumps({name: getattr(self, name) for name in LORA_SETTINGS}, separators=(",", ":"))


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding an object (a checkpoint's config), or one CheckpointError line."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path.name} ({exc})", str(path), "fix or re-save the file") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} is not a JSON object", str(path), "fix or re-save the file")
    return data


def merge_lineage(record: CheckpointRecord) -> dict[str, Any]:
    """The lineage a ``mashup merge`` output gives (its ``merge_report.json`` beside the weights): ``merged_from``
    (the input ids) and ``merge_method``, as ``mashup run`` records them; {} for a dir without a report.

    A report that cannot be read, or that contradicts the weights (``_report_mismatch``: copied beside others), is
    refused rather than dropped with a warning: registered without its lineage, the merge would be ranked for the
    targets its inputs were trained on, the leak selection promises to prevent, and in a recursive add a warning
    is easily lost among the others. The report holds no digest of the merged weights, so a report copied beside
    other weights of the same kind, rank and base passes."""
    path = Path(record.path) / MERGE_REPORT
    if not path.is_file():
        return {}
    fix = f"re-save the merge with `mashup merge`, or move {MERGE_REPORT} away to register it without its lineage"
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {MERGE_REPORT} ({exc})", str(path), fix) from None
    ids = report.get("checkpoint_ids") if isinstance(report, dict) else None
    method = report.get("method") if isinstance(report, dict) else None
    if not (isinstance(ids, list) and ids and all(isinstance(i, str) and i for i in ids)
            and isinstance(method, str) and method):
        raise CheckpointError(f"{MERGE_REPORT} holds no checkpoint_ids list and method name", str(path), fix)
    mismatch = _report_mismatch(report, record, ids)
    if mismatch:
        raise CheckpointError(f"{MERGE_REPORT} does not describe these weights ({mismatch})", str(path), fix)
    return {"merged_from": list(ids), "merge_method": method}


def _report_mismatch(report: dict[str, Any], record: CheckpointRecord, ids: list[str]) -> str | None:
    """How a merge report contradicts the (completed) record it was found beside, or None: another kind, LoRA rank
    or base (where both identities are known), or these very weights named as an input (copied beside one)."""
    if report.get("kind") not in (None, record.kind):
        return f"a {report['kind']} merge, but the weights are {record.kind}"
    rank = report.get("lora_rank")
    if record.kind == "lora" and rank is not None and rank != record.lora_r:
        return f"a merge of LoRA rank {rank}, but the adapter's r is {record.lora_r}"
    if record.id in ids:
        return f"it names these weights, {record.id}, as an input of their own merge"
    base = report.get("base")  # {"model", "dir", "identity"} where the merge recorded it
    identity = base.get("identity") if isinstance(base, dict) else None
    if identity and record.base_identity and identity != record.base_identity and not _legacy_of(record, identity):
        return f"a merge on base {str(identity)[:12]}, but the weights' base is {record.base_identity[:12]}"
    return None


def _legacy_of(record: CheckpointRecord, identity: object) -> bool:
    """Whether ``identity`` is the ``legacy_base_identity`` of ``record``'s base (a merge of records registered
    before the identity left out files transformers does not load records theirs): the same base, as
    ``same_record_base`` judges it."""
    from mashup.library.identity import record_base, same_record_base

    return same_record_base((record.base_model, str(identity)), record_base(record))


def inspect_lora(path: Path, task: str | None, allow_pickle: bool, check_values: bool = False,
                 base: str | None = None, base_shapes: BaseShapes | None = None) -> CheckpointRecord:
    """Read a PEFT LoRA adapter dir, each weight file's header parsed once; ``base`` (else the one its config
    names) tells the targets PEFT picks where target_modules is null, and, where it is on disk, the module shapes
    the factors must fit (``base_shapes``, default a fresh ``BaseShapes``)."""
    config = read_json_object(path / ADAPTER_CONFIG)
    if config.get("peft_type") != "LORA":  # PEFT looks it up as written: "lora" fails there with a KeyError
        raise CheckpointError(f"peft_type is {config.get('peft_type')!r}, only \"LORA\" is supported", str(path))
    if "rank_pattern" in config and config["rank_pattern"] or config.get("alpha_pattern"):
        raise CheckpointError("per-module rank/alpha patterns are not supported", str(path))
    settings = lora_settings(config, str(path / ADAPTER_CONFIG))
    check_peft_fields(config, str(path / ADAPTER_CONFIG))
    files, specs, shapes = _lora_tensors(path, config, settings["lora_r"], allow_pickle)
    base_model = str(config.get("base_model_name_or_path") or "")
    check_lora_targets(shapes, config, base or base_model, str(path))
    check_lora_fits_base(shapes, base or base_model, base_shapes or BaseShapes(), str(path))
    check_lora_dtypes(specs)
    stats = stat_files(files)  # before hashing: a change during hashing then shows as a stats mismatch later
    return CheckpointRecord(
        id="", kind="lora", path=str(path.resolve()), sha256=sha256_files(files, check_values=check_values),
        file_stats=stats, base_model=base_model, architecture=str(config.get("task_type") or ""),
        shapes=shapes, task=task, narrowing=lora_narrowing(config), **settings,
    )


def check_lora_dir(path: Path, allow_pickle: bool = False) -> dict[str, list[int]]:
    """The checks registration runs on an adapter's config, tensor ranks and dtypes, for one loaded without being
    registered (``mashup eval --adapter``): PEFT would fail on them with a traceback, or cast int factors.
    Returns every tensor's shape (from the one header read)."""
    config = read_json_object(path / ADAPTER_CONFIG)
    settings = lora_settings(config, str(path / ADAPTER_CONFIG))
    check_peft_fields(config, str(path / ADAPTER_CONFIG))
    _, specs, shapes = _lora_tensors(path, config, settings["lora_r"], allow_pickle)
    check_lora_dtypes(specs)
    return shapes


def _lora_tensors(path: Path, config: dict[str, Any], r: int, allow_pickle: bool
                  ) -> tuple[list[Path], dict[Path, dict[str, TensorSpec]], dict[str, list[int]]]:
    """An adapter's weight files, each one's tensors (one header parse) and all shapes, the factors' ranks
    checked against ``r`` (unless per-module rank patterns make them differ)."""
    files = weight_files(path, allow_pickle=allow_pickle)
    specs = all_specs(files)
    shapes = all_shapes(specs)
    if not (config.get("rank_pattern") or config.get("alpha_pattern")):
        check_lora_shapes(shapes, r, str(path))
    return files, specs, shapes


def lora_config_change(record: CheckpointRecord) -> str | None:
    """How the adapter_config.json on disk now differs from what ``record`` registered (its settings, and the
    narrowing fields where the record kept them), or None; an edit PEFT would refuse to load (``check_peft_fields``,
    as at registration) is a change too."""
    config_path = Path(record.path) / ADAPTER_CONFIG
    try:
        config = read_json_object(config_path)
        now = lora_settings(config, str(config_path))
        check_peft_fields(config, str(config_path))
    except MashupError as exc:
        return f"{ADAPTER_CONFIG} cannot be read now ({exc.what})"
    then = {name: getattr(record, name) for name in LORA_SETTINGS}
    if record.narrowing is not None:
        now, then = {**now, **lora_narrowing(config)}, {**then, **record.narrowing}
    changes = [f"{name} {then.get(name)!r} -> {value!r}" for name, value in now.items()
               if narrowing_choice(name, value) != narrowing_choice(name, then.get(name))]
    if changes == [f"lora_alpha {then['lora_alpha']!r} -> {now['lora_alpha']!r}"] and "lora_alpha" not in config \
            and then["lora_alpha"] == then["lora_r"]:
        return (f"{ADAPTER_CONFIG} has no lora_alpha, which mashup reads as PEFT does (8, its default) where the "
                f"entry holds r ({then['lora_r']}): registered before mashup read PEFT's default, or lora_alpha was "
                "removed since; remove the entry and add the adapter again")
    return f"{ADAPTER_CONFIG} changed since registration ({'; '.join(changes)})" if changes else None


def inspect_full(path: Path, base: str | None, task: str | None, allow_pickle: bool, check_values: bool = False,
                 base_shapes: BaseShapes | None = None) -> CheckpointRecord:
    """Read a full HF model dir fine-tuned from ``base``; ``base_shapes`` (default a fresh ``BaseShapes``) gives
    the base's tensors to match its own against."""
    config = read_json_object(path / MODEL_CONFIG)
    if not base:
        raise CheckpointError("a full fine-tune needs its base model", str(path), "pass --base MODEL")
    from mashup.library.identity import check_base_dir  # identity imports this module

    check_base_dir(base)  # else a typo registers as a base whose identity is unresolved, found out at merge time
    files = weight_files(path, allow_pickle=allow_pickle)  # every one is hashed; the tensors are those loaded
    shapes = all_shapes(all_specs(loaded_weight_files(path, allow_pickle=allow_pickle)))
    check_fits_base(shapes, base, (base_shapes or BaseShapes()).files(base), str(path))
    architecture = (config.get("architectures") or [config.get("model_type", "")])[0]
    stats = stat_files(files)
    return CheckpointRecord(
        id="", kind="full", path=str(path.resolve()), sha256=sha256_files(files, check_values=check_values),
        file_stats=stats, base_model=base, architecture=str(architecture), shapes=shapes, task=task,
    )


def _same_base(a: str, b: str) -> bool:
    """Two spellings of one base by content (resolved offline); False when either cannot be resolved."""
    from mashup.library.identity import resolve_identity  # identity imports this module

    identity = resolve_identity(a)
    return identity is not None and identity == resolve_identity(b)


def inspect_checkpoint(
    path: str | Path, *, base: str | None = None, task: str | None = None, allow_pickle: bool = False,
    check_values: bool = False, base_shapes: BaseShapes | None = None,
) -> CheckpointRecord:
    """Read a PEFT LoRA adapter dir or a full HF model dir; refuse what cannot be read, with the reason.
    ``check_values`` also refuses weights holding NaN or inf, checked as they are hashed; ``base_shapes`` gives
    the base's tensors to match a checkpoint's against (a ``BaseShapes`` shares one read among many)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError("checkpoint directory not found", str(path), "pass a PEFT adapter or HF model dir")
    if (path / ADAPTER_CONFIG).exists():
        refuse_model_beside_adapter(path)
        record = inspect_lora(path, task, allow_pickle, check_values, base, base_shapes)
        if base and record.base_model and base != record.base_model and not _same_base(base, record.base_model):
            raise CheckpointError(
                f"adapter names base '{record.base_model}' but --base is '{base}'", str(path), "drop --base or fix it"
            )
        record.base_model = base or record.base_model
        if not record.base_model:
            raise CheckpointError("adapter_config.json names no base model", str(path), "pass --base MODEL")
        return record
    if (path / MODEL_CONFIG).exists():
        return inspect_full(path, base, task, allow_pickle, check_values, base_shapes)
    raise CheckpointError("neither adapter_config.json nor config.json found", str(path),
                          "pass a PEFT adapter dir or a full HF model dir")


def inspect_to_register(path: Path, *, base: str | None, task: str | None, allow_pickle: bool,
                        base_shapes: BaseShapes) -> CheckpointRecord:
    """``inspect_checkpoint`` as registration runs it: weights holding NaN or inf refused, and an unreadable file
    one CheckpointError line."""
    try:
        return inspect_checkpoint(path, base=base, task=task, allow_pickle=allow_pickle, check_values=True,
                                  base_shapes=base_shapes)
    except OSError as exc:
        raise CheckpointError(f"cannot read {exc.filename or 'a file'} ({exc.strerror})", str(path),
                              "check the files and their permissions") from None


def discover_checkpoints(roots: Sequence[str | Path]) -> list[Path]:
    """Every PEFT adapter dir and HF model dir (config.json beside weights) under ``roots``; hidden dirs skipped."""
    found: list[Path] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise CheckpointError("directory not found", str(root), "pass dirs that hold adapters or models")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # also skips temp output dirs
            weights = any(f.endswith(".safetensors") or f.endswith(".bin") and f not in NOT_WEIGHTS for f in filenames)
            if ADAPTER_CONFIG in filenames or (MODEL_CONFIG in filenames and weights):
                found.append(Path(dirpath).resolve())
    found = list(dict.fromkeys(found))  # overlapping roots (runs and runs/sub) name a dir once
    if not found:
        raise CheckpointError("no adapter or model dirs found", ", ".join(map(str, roots)),
                              "a checkpoint dir holds adapter_config.json, or config.json and weights")
    return found
