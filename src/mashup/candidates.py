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
from mashup.errors import MashupError, listed
from mashup.library import BaseMatcher, CheckpointRecord, Library, incompatibility, partition_compatible
from mashup.library.lineage import trained_on_data, trained_on_ids, untraceable_ids
from mashup.merging import merge_compatibility, reference_key
from mashup.merging.compat import method_and_mode
from mashup.library.identity import BaseMemo

logger = logging.getLogger(__name__)
INCLUDE_TARGET_HINT = ("to rank them too, pass --include-target-checkpoints (select, run) or set "
                       "include_target_checkpoints: true in the select config")
STALE = "stale: "  # how a stale checkpoint's reason starts, among the rejected
KIND_HINT = "to rank them: --kind {kind} in select, --mode {kind} in run, mode: {kind} in an experiment config"


@dataclass
class Candidates:
    """The checkpoints to rank, and the ones left out: ``rejected`` (cannot join) and ``excluded``
    (trained on the target), each as {"id", "reason"}; ``other_kinds`` counts, per kind, the rejected ones
    left out for their kind alone (they fit the base: a run of that kind could rank them); ``untraced`` names
    the ranked ones whose lineage reaches a checkpoint no longer in the library (``lineage.untraceable_ids``)."""

    records: list[CheckpointRecord]
    rejected: list[dict[str, str]] = field(default_factory=list)
    excluded: list[dict[str, str]] = field(default_factory=list)
    other_kinds: dict[str, int] = field(default_factory=dict)
    untraced: list[str] = field(default_factory=list)


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
    known = records or {}
    reached_from: dict[str, CheckpointRecord | None] = {record.id: None}  # also guards a cycle (a hand-made lineage)
    queue = deque([record])
    while queue:
        current = queue.popleft()
        if trained_on_data(current, target.name, target.fingerprint):
            chain = [current]
            while (child := reached_from[chain[-1].id]) is not None:
                chain.append(child)
            return chain[::-1]
        for parent_id in current.merged_from:
            parent = known.get(parent_id)
            if parent is not None and parent.id not in reached_from:
                reached_from[parent.id] = current
                queue.append(parent)
    return None


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
    kept: list[CheckpointRecord] = []
    bases: BaseMemo = {}  # one pass's: the same few (spelling, identity) pairs, for each of maybe 1,000 candidates
    for record in records:
        reason = merge_compatibility([*kept[:1], record], merge, bases=bases)
        if reason:
            rejected.append((record, reason))
        else:
            kept.append(record)
    return kept, rejected


def find_candidates(library: Library, base: str, kind: str, target: TargetData, merge: MergeConfig, *,
                    base_id: str | None = None, include_target: bool = False, among: Collection[str] | None = None,
                    include_hint: str | None = INCLUDE_TARGET_HINT, log_rejected: bool = True) -> Candidates:
    """The library's checkpoints that selection may rank for ``target``, with every exclusion logged.

    ``among`` limits them to these ids (None: the whole library). ``include_hint`` tells the caller's users
    how to rank the target's own checkpoints; None when leaving them out is the protocol (logged as info).
    ``log_rejected=False`` leaves the rejected and untraced ones to a caller that gathers several calls'
    (``log_left_out``).
    """
    _, lora_mode = method_and_mode(merge, kind)
    everything = library.list()
    in_scope = [r for r in everything if among is None or r.id in among]
    fresh, stale = library.fresh(in_scope)
    by_id = {r.id: r for r in everything}  # lineage is followed through the whole library, not ``among`` alone
    saw = set() if include_target else trained_on_ids(everything, target.name, target.fingerprint)
    chains = {r.id: target_lineage(r, target, by_id) for r in fresh if r.id in saw}  # for the reasons only
    compatible, rejected = partition_compatible(fresh, base, kind, lora_mode=lora_mode or "ab", base_id=base_id)
    other_kinds = _other_kinds([r for r, _ in rejected if chains.get(r.id) is None], base, kind,
                               base_id)  # fresh ones, that the other kind would not leave out as the target's
    rejected = [(r, f"{STALE}{reason}") for r, reason in stale] + rejected
    leaking = [r for r in compatible if chains.get(r.id) is not None]
    mergeable, refused = _mergeable([r for r in compatible if chains.get(r.id) is None], merge)
    found = Candidates(mergeable, [{"id": r.id, "reason": reason} for r, reason in rejected + refused],
                       [{"id": r.id, "reason": exclusion_reason(chains[r.id], target)} for r in leaking], other_kinds,
                       [] if include_target else _untraced(mergeable, everything))
    if log_rejected:
        log_left_out([found])
    _log_leaks([chains[r.id] for r in leaking], target, include_hint)
    return found


def _untraced(candidates: Sequence[CheckpointRecord], everything: Sequence[CheckpointRecord]) -> list[str]:
    untraceable = untraceable_ids(everything)
    return [r.id for r in candidates if r.id in untraceable]


def _log_leaks(chains: Sequence[list[CheckpointRecord]], target: TargetData, include_hint: str | None) -> None:
    """One line for the checkpoints left out as trained on ``target``: a warning where ``include_hint`` says how to
    rank them, else info (leaving them out is the protocol)."""
    if chains:
        labels = ", ".join(_leak_label(chain) for chain in chains)
        logger.log(logging.WARNING if include_hint else logging.INFO, "excluded %d checkpoint(s) trained on the "
                   "target '%s' (%s)%s", len(chains), target.name, labels, f"; {include_hint}" if include_hint else "")


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
        found = Candidates(narrowed.records, found.rejected + narrowed.rejected, found.excluded, found.other_kinds,
                           narrowed.untraced)
    if log_rejected:
        log_left_out([found])
    return found


def _other_kinds(rejected: Sequence[CheckpointRecord], base: str, kind: str, base_id: str | None
                 ) -> dict[str, int]:
    """Per other kind, how many of ``rejected`` would be candidates of their own kind on ``base``."""
    others = [r for r in rejected if r.kind != kind]
    if not others:  # the usual case: no second base identity to resolve
        return {}
    matcher = BaseMatcher(base, base_id)
    return dict(Counter(r.kind for r in others if incompatibility(r, None, base, r.kind, matcher=matcher) is None))


def log_left_out(found: Iterable[Candidates]) -> None:
    """Log what several ``find_candidates`` calls (one per target, say) left out or could not trace, once:
    ``log_rejections`` of their rejected, then one warning naming every untraced candidate."""
    found = list(found)
    log_rejections(item for candidates in found for item in candidates.rejected)
    log_untraced(i for candidates in found for i in candidates.untraced)


def log_untraced(ids: Iterable[str]) -> None:
    """One warning naming the ranked candidates (``Candidates.untraced``, each once) whose lineage reaches a
    checkpoint no longer in the library."""
    unknown = list(dict.fromkeys(ids))
    if unknown:
        logger.warning("%d candidate(s) merged from checkpoints no longer in the library (%s): whether those saw "
                       "the target's data cannot be told, so they are ranked; `mashup library remove` them if they "
                       "may have", len(unknown), listed(unknown))


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
            logger.warning("skipping %d checkpoints (%s): %s", len(ids), listed(ids), reason)


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
