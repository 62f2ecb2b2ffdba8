"""Which library checkpoints selection may rank for a target, decided before anything is scored.

A candidate must be fresh (its files unchanged since registration), fit the base and kind, not have been
trained on the target, itself or through a checkpoint it was merged from (that would leak the target into the
comparison), and be mergeable with the others under the run's merge settings (same init reference for
task-vector methods, same LoRA shape in ``ab`` mode). Every checkpoint left out is reported with its reason,
so selection never pays for a candidate the merge would refuse.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Collection, Iterable, Mapping, Sequence
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
STALE = "stale: "  # how a stale checkpoint's reason starts, among the rejected
SHOWN_IDS = 5  # ids named in one warning for several checkpoints left out for one reason
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


def trained_on(record: CheckpointRecord, target: TargetData,
               records: Mapping[str, CheckpointRecord] | None = None) -> bool:
    """True when the checkpoint saw the target's data (the same data fingerprint, or the same task name), itself or
    through a checkpoint it was merged from, found in ``records`` (id -> record; None: the checkpoint alone)."""
    return target_lineage(record, target, records) is not None


def target_lineage(record: CheckpointRecord, target: TargetData,
                   records: Mapping[str, CheckpointRecord] | None = None) -> list[CheckpointRecord] | None:
    """The shortest chain from ``record`` through its lineage's ``merged_from`` (ids resolved in ``records``) to a
    checkpoint that saw the target's data: ``[record]`` when it did itself; None when none did. A merge carries its
    inputs' weights, and so does a run trained from one: both saw what their ancestors saw. An id not in
    ``records`` (removed since) cannot be followed."""
    reached_from: dict[str, CheckpointRecord | None] = {record.id: None}  # also guards a cycle (a hand-made lineage)
    queue = deque([record])
    while queue:
        current = queue.popleft()
        if _saw(current, target):
            chain = [current]
            while (child := reached_from[chain[-1].id]) is not None:
                chain.append(child)
            return chain[::-1]
        for parent_id in _parent_ids(current) if records else []:
            parent = records.get(parent_id) if records else None
            if parent is not None and parent.id not in reached_from:
                reached_from[parent.id] = current
                queue.append(parent)
    return None


def _parent_ids(record: CheckpointRecord) -> list[str]:
    parents = record.lineage.get("merged_from")
    return [str(i) for i in parents] if isinstance(parents, list) else []


def untraced(records: Iterable[CheckpointRecord], by_id: Mapping[str, CheckpointRecord]) -> list[CheckpointRecord]:
    """The records merged from a checkpoint that is not in ``by_id`` (removed from the library since, or merged in
    another): whether it saw a target cannot be told."""
    return [r for r in records if any(i not in by_id for i in _parent_ids(r))]


def _saw(record: CheckpointRecord, target: TargetData) -> bool:
    same_data = record.data_fingerprint is not None and record.data_fingerprint == target.fingerprint
    trained = record.lineage.get("trained_on")
    trained_task = trained.get("task") if isinstance(trained, dict) else None
    return same_data or target.name in {record.task, trained_task}


def exclusion_reason(chain: Sequence[CheckpointRecord], target: TargetData) -> str:
    """Why a checkpoint is left out, from its ``target_lineage``: which ancestor saw the target."""
    steps = [f"{'itself ' if i else ''}merged from {c.id}" for i, c in enumerate(chain[1:])]
    return ", ".join([*steps, f"trained on the target '{target.name}'"])


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
    everything = library.list()
    listed = [r for r in everything if among is None or r.id in among]
    fresh, stale = library.fresh(listed)
    by_id = {r.id: r for r in everything}  # lineage is followed through the whole library, not ``among`` alone
    chains = {} if include_target else {r.id: target_lineage(r, target, by_id) for r in fresh}
    compatible, rejected = partition_compatible(fresh, base, kind, lora_mode=lora_mode or "ab", base_id=base_id)
    other_kinds = _other_kinds([r for r, _ in rejected if chains.get(r.id) is None], base, kind,
                               base_id)  # fresh ones, that the other kind would not leave out as the target's
    rejected = [(r, f"{STALE}{reason}") for r, reason in stale] + rejected
    leaking = [r for r in compatible if chains.get(r.id) is not None]
    leaking_ids = {r.id for r in leaking}
    mergeable, refused = _mergeable([r for r in compatible if r.id not in leaking_ids], merge)
    rejected += refused
    found = Candidates(mergeable, [{"id": r.id, "reason": reason} for r, reason in rejected],
                       [{"id": r.id, "reason": exclusion_reason(chains[r.id], target)} for r in leaking], other_kinds)
    if log_rejected:
        log_rejections(found.rejected)
    unknown = untraced(found.records, by_id)
    if unknown and not include_target:
        logger.warning("%d candidate(s) merged from checkpoints no longer in the library (%s): whether those saw "
                       "the target's data cannot be told, so they are ranked; `mashup library remove` them if they "
                       "may have", len(unknown), ", ".join(r.id for r in unknown[:SHOWN_IDS]))
    if leaking:
        labels = ", ".join(_leak_label(chains[r.id]) for r in leaking)
        logger.log(logging.WARNING if include_hint else logging.INFO, "excluded %d checkpoint(s) trained on the "
                   "target '%s' (%s)%s", len(leaking), target.name, labels, f"; {include_hint}" if include_hint else "")
    return found


def _leak_label(chain: list[CheckpointRecord]) -> str:
    return chain[0].id if len(chain) == 1 else f"{chain[0].id} via {chain[-1].id}"


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
    """One warning per reason checkpoints were left out for (``Candidates.rejected`` items), naming the checkpoint,
    or, where several share it (a library's checkpoints of the other kind), their count and the first few ids."""
    by_reason: dict[str, list[str]] = {}
    for checkpoint_id, reason in dict.fromkeys((item["id"], item["reason"]) for item in rejected):
        by_reason.setdefault(reason, []).append(checkpoint_id)
    for reason, ids in by_reason.items():
        if len(ids) == 1:
            logger.warning("skipping %s: %s", ids[0], reason)
        else:
            shown = ", ".join(ids[:SHOWN_IDS]) + (", ..." if len(ids) > SHOWN_IDS else "")
            logger.warning("skipping %d checkpoints (%s): %s", len(ids), shown, reason)


def describe_shortage(candidates: Candidates, k: int, kind: str, base: str) -> str | None:
    """Why selection cannot pick ``k``, in one line (None when it can); checkpoints left out for their kind
    alone are counted apart, with the option that ranks them (``KIND_HINT``)."""
    if len(candidates.records) >= max(k, 1):
        return None
    left_out = []
    if candidates.excluded:
        left_out.append(f"{len(candidates.excluded)} trained on the target")
    stale = sum(item["reason"].startswith(STALE) for item in candidates.rejected)
    if stale:
        left_out.append(f"{stale} stale (files changed or gone since registered: reasons above)")
    incompatible = len(candidates.rejected) - stale - sum(candidates.other_kinds.values())
    if incompatible:
        left_out.append(f"{incompatible} incompatible (reasons above)")
    left_out += [f"{n} of kind {other} ({KIND_HINT.format(kind=other)})"
                 for other, n in sorted(candidates.other_kinds.items())]
    also = f"; left out: {', '.join(left_out)}" if left_out else ""
    return f"k={k} but {len(candidates.records)} usable {kind} checkpoint(s) for base '{base}'{also}"
