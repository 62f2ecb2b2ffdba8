"""Which library checkpoints selection may rank for a target, decided before anything is scored.

A candidate must be fresh (its files unchanged since registration), fit the base and kind, not have been
trained on the target (that would leak the target into the comparison), and be mergeable with the
others under the run's merge settings (same init reference for task-vector methods, same LoRA shape in
``ab`` mode). Every checkpoint left out is reported with its reason, so selection never pays for a
candidate the merge would refuse.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from mashup.config import MergeConfig
from mashup.data.target import TargetData
from mashup.errors import MashupError
from mashup.library import BaseMatcher, CheckpointRecord, Library, incompatibility, partition_compatible
from mashup.merging import merge_compatibility, reference_key
from mashup.merging.compat import method_and_mode

logger = logging.getLogger(__name__)
INCLUDE_TARGET_HINT = ("to rank them too, pass --include-target-checkpoints (select, run) or set "
                       "include_target_checkpoints: true in the select config")
KIND_HINT = "to rank them: --kind {kind} in select, --mode {kind} in run, mode: {kind} in an experiment config"


@dataclass
class Candidates:
    """The checkpoints to rank, and the ones left out: ``rejected`` (cannot join) and ``excluded``
    (trained on the target), each as {"id", "reason"}; ``other_kinds`` counts, per kind, the rejected ones
    left out for their kind alone (they fit the base: a run of that kind could rank them)."""

    records: list[CheckpointRecord]
    rejected: list[dict[str, str]] = field(default_factory=list)
    excluded: list[dict[str, str]] = field(default_factory=list)
    other_kinds: dict[str, int] = field(default_factory=dict)


def trained_on(record: CheckpointRecord, target: TargetData) -> bool:
    """True when the checkpoint saw the target's data: the same data fingerprint, or the same task name."""
    same_data = record.data_fingerprint is not None and record.data_fingerprint == target.fingerprint
    trained_task = (record.lineage.get("trained_on") or {}).get("task")
    return same_data or target.name in {record.task, trained_task}


def _same_reference(records: list[CheckpointRecord], merge: MergeConfig
                    ) -> tuple[list[CheckpointRecord], list[tuple[CheckpointRecord, str]]]:
    """Task-vector merges need one init reference: keep the largest group of equal references."""
    method, mode = method_and_mode(merge, records[0].kind)
    keys: dict[str, str | None] = {}
    rejected = []
    for record in records:
        try:
            keys[record.id] = reference_key(record, method, mode)
        except MashupError as exc:
            rejected.append((record, exc.line()))
    counts = Counter(keys.values())
    if len(counts) <= 1:
        return [r for r in records if r.id in keys], rejected
    majority = next(key for key in keys.values() if counts[key] == max(counts.values()))
    for record in records:
        if record.id in keys and keys[record.id] != majority:
            rejected.append((record, f"init reference {keys[record.id]} differs from the {counts[majority]} "
                                     f"candidates' {majority} ({merge.method} merges task vectors from one reference)"))
    return [r for r in records if keys.get(r.id, object()) == majority], rejected


def _mergeable(records: list[CheckpointRecord], merge: MergeConfig
               ) -> tuple[list[CheckpointRecord], list[tuple[CheckpointRecord, str]]]:
    if not records:
        return records, []
    records, rejected = _same_reference(records, merge)
    kept = []
    for record in records:
        reason = merge_compatibility([records[0], record], merge) if kept else merge_compatibility([record], merge)
        (rejected.append((record, reason)) if reason else kept.append(record))
    return kept, rejected


def find_candidates(library: Library, base: str, kind: str, target: TargetData, merge: MergeConfig, *,
                    base_id: str | None = None, include_target: bool = False, among: Collection[str] | None = None,
                    include_hint: str | None = INCLUDE_TARGET_HINT, log_rejected: bool = True) -> Candidates:
    """The library's checkpoints that selection may rank for ``target``, with every exclusion logged.

    ``among`` limits them to these ids (None: the whole library). ``include_hint`` tells the caller's users
    how to rank the target's own checkpoints; None when leaving them out is the protocol (logged as info).
    ``log_rejected=False`` leaves the rejected ones to a caller that gathers several calls' (``log_rejections``).
    """
    _, lora_mode = method_and_mode(merge, kind)
    listed = [r for r in library.list() if among is None or r.id in among]
    fresh, stale = library.fresh(listed)
    compatible, rejected = partition_compatible(fresh, base, kind, lora_mode=lora_mode or "ab", base_id=base_id)
    other_kinds = _other_kinds([r for r, _ in rejected if include_target or not trained_on(r, target)], base, kind,
                               base_id)  # fresh ones, that the other kind would not leave out as the target's
    rejected = [(r, f"stale: {reason}") for r, reason in stale] + rejected
    leaking = [] if include_target else [r for r in compatible if trained_on(r, target)]
    leaking_ids = {r.id for r in leaking}
    mergeable, refused = _mergeable([r for r in compatible if r.id not in leaking_ids], merge)
    rejected += refused
    found = Candidates(mergeable, [{"id": r.id, "reason": reason} for r, reason in rejected],
                       [{"id": r.id, "reason": f"trained on the target '{target.name}'"} for r in leaking], other_kinds)
    if log_rejected:
        log_rejections(found.rejected)
    if leaking:
        logger.log(logging.WARNING if include_hint else logging.INFO, "excluded %d checkpoint(s) trained on the "
                   "target '%s' (%s)%s", len(leaking), target.name, ", ".join(r.id for r in leaking),
                   f"; {include_hint}" if include_hint else "")
    return found


def find_mergeable_candidates(library: Library, base: str, kind: str, target: TargetData,
                              merges: Sequence[MergeConfig], *, among: Collection[str] | None = None,
                              base_id: str | None = None, log_rejected: bool = True) -> Candidates:
    """What ``find_candidates`` keeps under every one of ``merges`` (an experiment's arms and grid merge the
    same ranking with several methods), each pass among those the pass before kept; ``rejected`` gathers
    every pass's reasons. The target's own checkpoints are left out as the protocol (no hint)."""
    if not merges:
        raise ValueError("find_mergeable_candidates needs at least one merge config")
    found = find_candidates(library, base, kind, target, merges[0], base_id=base_id, among=among,
                            include_hint=None, log_rejected=False)
    for merge in merges[1:]:
        narrowed = find_candidates(library, base, kind, target, merge, base_id=base_id,
                                   among=[r.id for r in found.records], include_hint=None, log_rejected=False)
        found = Candidates(narrowed.records, found.rejected + narrowed.rejected, found.excluded, found.other_kinds)
    if log_rejected:
        log_rejections(found.rejected)
    return found


def _other_kinds(rejected: Sequence[CheckpointRecord], base: str, kind: str, base_id: str | None
                 ) -> dict[str, int]:
    """Per other kind, how many of ``rejected`` would be candidates of their own kind on ``base``."""
    others = [r for r in rejected if r.kind != kind]
    if not others:  # the usual case: no second base identity to resolve
        return {}
    matcher = BaseMatcher(base, base_id)
    return dict(Counter(r.kind for r in others if incompatibility(r, None, base, r.kind, matcher=matcher) is None))


def log_rejections(rejected: Iterable[dict[str, str]]) -> None:
    """One warning per checkpoint left out (``Candidates.rejected`` items), a repeated one only once."""
    for checkpoint_id, reason in dict.fromkeys((item["id"], item["reason"]) for item in rejected):
        logger.warning("skipping %s: %s", checkpoint_id, reason)


def describe_shortage(candidates: Candidates, k: int, kind: str, base: str) -> str | None:
    """Why selection cannot pick ``k``, in one line (None when it can); checkpoints left out for their kind
    alone are counted apart, with the option that ranks them (``KIND_HINT``)."""
    if len(candidates.records) >= max(k, 1):
        return None
    left_out = []
    if candidates.excluded:
        left_out.append(f"{len(candidates.excluded)} trained on the target")
    incompatible = len(candidates.rejected) - sum(candidates.other_kinds.values())
    if incompatible:
        left_out.append(f"{incompatible} incompatible (reasons above)")
    left_out += [f"{n} of kind {other} ({KIND_HINT.format(kind=other)})"
                 for other, n in sorted(candidates.other_kinds.items())]
    also = f"; left out: {', '.join(left_out)}" if left_out else ""
    return f"k={k} but {len(candidates.records)} usable {kind} checkpoint(s) for base '{base}'{also}"
