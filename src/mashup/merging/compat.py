"""Which checkpoints can be merged with which settings, decided from catalog records alone.

Everything here reads record metadata (kind, rank, alpha, rsLoRA, targets, tensor shapes) and, for
methods that use task vectors, the init reference files (their digest and whether B₀ = 0), never
the checkpoints' weights. ``build_plan`` and ``merge_compatibility`` share these checks, so selection
can exclude candidates for the same reasons a merge would refuse them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from mashup.config import LoraMode, MergeConfig
from mashup.errors import MashupError, MergeError, listed
from mashup.library.identity import BaseMatcher, BaseMemo, record_base, same_record_base
from mashup.library.lora_config import is_factor
from mashup.library.records import CheckpointRecord
from mashup.merging.base import MergeMethod
from mashup.merging.references import reference_identity
from mashup.merging.registry import get_merge_method


@dataclass(frozen=True)
class LoraModule:
    """One adapted layer of one adapter: rank and the (out, in) shape of its ΔW."""

    rank: int
    out_features: int
    in_features: int


def _name(record: CheckpointRecord) -> str:
    return record.id or record.path


def refuse_other_tensors(names: Iterable[str], where: str | None) -> None:
    """Refuse an adapter holding anything but lora_A/lora_B tensors (modules_to_save, DoRA magnitudes)."""
    extra = [n for n in names if not is_factor(n)]
    if extra:
        raise MergeError(f"adapter holds non-LoRA tensors (e.g. {extra[0]}: modules_to_save or DoRA)", where,
                         "merge adapters that hold only lora_A/lora_B tensors")


def lora_modules(record: CheckpointRecord) -> dict[str, LoraModule]:
    """Module prefix → LoraModule, from the record's tensor shapes (only Linear-style 2-D factors)."""
    modules = {}
    for name, a_shape in record.shapes.items():
        if ".lora_A." not in name:
            continue
        module = name.split(".lora_A.")[0]
        b_shape = record.shapes.get(name.replace(".lora_A.", ".lora_B."), [])
        if len(a_shape) != 2 or len(b_shape) != 2:
            raise MergeError(f"module {module} has {len(a_shape)}-D LoRA factors (a conv layer?)", record.path,
                             "only Linear LoRA layers can be merged in delta or concat mode; use lora_mode ab")
        modules[module] = LoraModule(a_shape[0], b_shape[0], a_shape[1])
    return modules


def resolve_lora_mode(method: MergeMethod, requested: LoraMode | None) -> LoraMode:
    """The mode used: statistics methods always merge ΔW; by default linear methods merge A and B
    (the paper's reference average) and non-linear ones merge ΔW = s·B·A."""
    if method.statistic is not None:
        return "delta"
    if requested is not None:
        return requested
    return "ab" if method.linear else "delta"


def method_and_mode(config: MergeConfig, kind: str) -> tuple[MergeMethod, LoraMode | None]:
    method = get_merge_method(config.method)
    return method, (resolve_lora_mode(method, config.lora_mode) if kind == "lora" else None)


def output_rank(records: Sequence[CheckpointRecord], requested: int | None) -> int:
    """The delta-mode output rank: the one asked for, else the most common input rank (first on ties)."""
    if requested is not None:
        return requested
    ranks = [r.lora_r or 0 for r in records]
    counts = Counter(ranks)
    return next(rank for rank in ranks if counts[rank] == max(counts.values()))


def _require_same(records: Sequence[CheckpointRecord], value: Callable[[CheckpointRecord], object], what: str,
                  fix: str) -> None:
    first = value(records[0])
    for record in records[1:]:
        if value(record) != first:
            raise MergeError(f"{what} differs: {_name(record)} has {value(record)!r}, {_name(records[0])} has "
                             f"{first!r}", None, fix)


def _check_shapes_equal(records: Sequence[CheckpointRecord]) -> None:
    first = records[0].shapes
    for record in records[1:]:
        if record.shapes.keys() != first.keys():
            differing = sorted(set(first) ^ set(record.shapes))
            if all(name.endswith(".lora_B.bias") for name in differing):
                raise MergeError(f"lora_bias differs between checkpoints (e.g. {differing[0]} in one only)",
                                 record.path, "merge with lora_mode delta or concat, which take a missing bias as 0")
            raise MergeError(f"tensor names differ between checkpoints (e.g. {differing[:3]})", record.path)
        bad = next((n for n in first if record.shapes[n] != first[n]), None)
        if bad is not None:
            raise MergeError(f"tensor {bad} has shape {record.shapes[bad]} but {first[bad]} in {_name(records[0])}",
                             record.path, "merge checkpoints of one base")


def _check_ab(records: Sequence[CheckpointRecord]) -> None:
    fix = "use lora_mode delta or concat, which allow it"
    _require_same(records, lambda r: r.lora_r, "LoRA rank (lora_mode ab merges A and B entry by entry)", fix)
    _require_same(records, lambda r: sorted(r.target_modules or []), "LoRA target modules (lora_mode ab)", fix)
    _require_same(records, lambda r: r.lora_scale, "LoRA scale alpha/r (or alpha/√r with rsLoRA; lora_mode ab "
                  "cannot fold a scale into one factor)", "use lora_mode delta or concat, which fold each "
                  "adapter's scale into ΔW")
    _check_shapes_equal(records)


def _check_delta(records: Sequence[CheckpointRecord]) -> None:
    """Modules may differ (missing ones count as ΔW = 0) and ranks may differ; shared modules must agree."""
    seen: dict[str, tuple[LoraModule, CheckpointRecord]] = {}
    for record in records:
        for module, layer in lora_modules(record).items():
            first, owner = seen.setdefault(module, (layer, record))
            if (layer.out_features, layer.in_features) != (first.out_features, first.in_features):
                raise MergeError(f"module {module} adapts a {layer.out_features}×{layer.in_features} weight in "
                                 f"{_name(record)} but {first.out_features}×{first.in_features} in {_name(owner)}",
                                 None, "merge adapters of one base model")


def check_records(records: Sequence[CheckpointRecord], method: MergeMethod, lora_mode: LoraMode | None, *,
                  bases: BaseMemo | None = None) -> None:
    """Raise MergeError (naming the difference) unless ``records`` can be merged with this method and mode;
    ``bases`` keeps base comparisons for a caller checking many records (``same_record_base``)."""
    if not records:
        raise MergeError("no checkpoints to merge", None, "select at least one (k >= 1)")
    _refuse_repeats(records)
    _require_same(records, lambda r: r.kind, "checkpoint kind", "merge only checkpoints of one kind")
    _check_one_base(records, bases)
    if records[0].kind == "full":
        _check_shapes_equal(records)
    else:
        if any(r.use_dora for r in records):
            raise MergeError("DoRA adapters cannot be merged", None, "use plain LoRA adapters")
        for record in records:
            refuse_other_tensors(record.shapes, record.path)
        if lora_mode == "concat" and not method.linear:
            raise MergeError(f"lora_mode concat only supports average/task_arithmetic (linear methods), not "
                             f"{method.name}", None, "use lora_mode delta (ΔW merge, then SVD)")
        if lora_mode == "ab":
            _check_ab(records)
        else:
            _check_delta(records)
    if method.uses_reference:
        _check_references(records, lora_mode)


def _refuse_repeats(records: Sequence[CheckpointRecord]) -> None:
    """Refuse one catalog entry given twice (its id and dir): merging it with itself only reweights it."""
    keys = [(r.id, r.path) for r in records if r.id]
    repeated = next((key for key in keys if keys.count(key) > 1), None)
    if repeated is not None:
        raise MergeError(f"checkpoint {repeated[0]} is given {keys.count(repeated)} times", None,
                         "give each checkpoint once (an id prefix names the checkpoint it resolves to)")


def _base_text(record: CheckpointRecord) -> str:
    identity = f"identity {record.base_identity[:12]}" if record.base_identity else "identity unresolved"
    return f"{_name(record)}: '{record.base_model}', {identity}"


def _check_one_base(records: Sequence[CheckpointRecord], bases: BaseMemo | None = None) -> None:
    """Refuse checkpoints fine-tuned from different base models: their deltas live in different weight spaces."""
    for record in records[1:]:
        if not same_record_base(record_base(records[0]), record_base(record), bases):
            raise MergeError(f"checkpoints {_name(records[0])} and {_name(record)} are of different base models "
                             f"({_base_text(records[0])}; {_base_text(record)})", None,
                             "merge checkpoints of one base")


def check_base(records: Sequence[CheckpointRecord], base: str, identity: str | None = None, *,
               given: bool = True) -> None:
    """Refuse a base that is not the records' base by the library's rule: ``--base`` (``given``), or else the dir
    their own base names, which ``mashup merge`` reads config, reference weights and statistics from (then a
    mismatch means it changed on disk since they were registered); ``identity`` is its content identity where the
    caller has it."""
    matcher = BaseMatcher(base, identity)
    reasons = {record.id: reason for record in records if (reason := matcher.mismatch(record)) is not None}
    if not reasons:
        return
    record = next(r for r in records if r.id in reasons)
    own = f"identity {matcher.identity[:12]}" if matcher.identity else "identity unresolved"
    # a base changed on disk: merging against it takes task vectors from weights the checkpoints never started
    # from, so registering them again is right only if they were fine-tuned from the new weights
    fix = ("merge checkpoints with the base they were fine-tuned from (leave --base out to use theirs)" if given
           else f"restore the base dir's weights (identity {str(record.base_identity)[:12]} when registered); only "
           f"if {listed(list(reasons))} were fine-tuned from its new weights, register them again (`mashup library "
           "remove ID`, then `library add`)")
    raise MergeError(f"base '{base}' ({own}) is not the base model of checkpoint {_base_text(record)}: "
                     f"{reasons[record.id]}", None, fix)


def _check_references(records: Sequence[CheckpointRecord], lora_mode: LoraMode | None) -> None:
    identities = [reference_identity(r, lora_mode) for r in records]
    if len(set(identities)) > 1:
        differing = next(i for i, key in enumerate(identities) if key != identities[0])
        raise MergeError(f"adapters start from different init references in lora_mode {lora_mode}: "
                         f"{_name(records[differing])} from {identities[differing]}, {_name(records[0])} from "
                         f"{identities[0]}", None, "task vectors need one reference: merge adapters with the same "
                         "init, use lora_mode delta (every B₀ = 0 init is the zero reference there), or a method "
                         "without task vectors (average)")


def reference_key(record: CheckpointRecord, method: str | MergeMethod, lora_mode: LoraMode | None = None) -> str | None:
    """The identity of the task-vector reference ``record`` brings to a merge with ``method`` and
    ``lora_mode`` (None: the method's default mode); None when the method uses no reference.

    Records with equal keys can share a merge. Cheap: reads the init reference's B tensors and digest
    once per file (cached), never the checkpoint. Raises MergeError if the reference file is missing.
    """
    merger = get_merge_method(method) if isinstance(method, str) else method
    if not merger.uses_reference:
        return None
    mode = resolve_lora_mode(merger, lora_mode) if record.kind == "lora" else None
    return reference_identity(record, mode)


def merge_compatibility(records: Sequence[CheckpointRecord], config: MergeConfig, *,
                        bases: BaseMemo | None = None) -> str | None:
    """Why ``records`` cannot be merged with ``config`` (one line), or None if they can.

    Uses the same checks as the merge itself, from catalog records alone (see the module docstring).
    Weight counts are not checked: call it with any subset, e.g. [template, candidate] per candidate, with one
    ``bases`` memo (a dict) over those calls.
    """
    try:
        if not records:
            raise MergeError("no checkpoints to merge")
        method, mode = method_and_mode(config, records[0].kind)
        check_records(records, method, mode, bases=bases)
    except MashupError as exc:
        return exc.line()
    return None
