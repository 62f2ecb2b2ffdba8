"""Lineage across the catalog: a merge carries its inputs' weights, and a run trained from a merge carries them too,
so whatever a checkpoint saw, every checkpoint merged from it (at any depth) saw as well. One rule for what
selection leaves out for a target (``mashup.candidates``) and what ``library list --trained-on`` lists."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Sequence

from mashup.library.records import CheckpointRecord

FINGERPRINT_PREFIX_MIN = 6  # a shorter --trained-on value is taken for a task name only


def trained_on_data(record: CheckpointRecord, task: str | None, fingerprint: str | None = None) -> bool:
    """Whether the checkpoint itself was trained on ``task`` (its task, or its lineage's ``trained_on`` one) or on
    data whose fingerprint starts with ``fingerprint``."""
    trained = record.lineage.get("trained_on") if isinstance(record.lineage.get("trained_on"), dict) else {}
    prints = [p for p in (record.data_fingerprint, trained.get("data_fingerprint")) if isinstance(p, str)]
    return (task is not None and task in (record.task, trained.get("task"))) or \
        any(fingerprint and p.startswith(fingerprint) for p in prints)


def descendants(records: Iterable[CheckpointRecord], seeds: Iterable[str]) -> set[str]:
    """``seeds`` and the ids of every record merged from one of them, at any depth: one walk down a children map,
    linear in the catalog (a cycle in a hand-made lineage is visited once)."""
    children: dict[str, list[str]] = defaultdict(list)
    for record in records:
        for parent in record.merged_from:
            children[parent].append(record.id)
    reached = set(seeds)
    queue = deque(reached)
    while queue:
        for child in children.get(queue.popleft(), ()):
            if child not in reached:
                reached.add(child)
                queue.append(child)
    return reached


def trained_on_ids(records: Sequence[CheckpointRecord], task: str | None, fingerprint: str | None) -> set[str]:
    """Ids of ``records`` trained on ``task`` or on data of ``fingerprint`` (a prefix), themselves or through a
    checkpoint they were merged from."""
    return descendants(records, [r.id for r in records if trained_on_data(r, task, fingerprint)])


def untraceable_ids(records: Sequence[CheckpointRecord]) -> set[str]:
    """Ids of ``records`` merged, at any depth, from a checkpoint that is not among them (removed from the library
    since, or merged in another): whether they saw a target cannot be told."""
    known = {r.id for r in records}
    return descendants(records, [r.id for r in records if any(p not in known for p in r.merged_from)])
