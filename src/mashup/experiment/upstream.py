"""Whether a finished artifact still follows from the artifacts it was built on.

A job's key names what it is built on by the upstream job's key (a source by its training run's artifact, a run
from a merge by the merge's artifact), not by the upstream's bytes. Recomputing an upstream artifact (edited by
hand, then remade: a GPU's training or merge is not bit for bit) keeps those keys, so the manifest of the
downstream artifact alone would keep it done, built on weights that are gone. :func:`upstream_changed` tells
it: a source whose registered weights changed on disk, or a run whose step 0 is not its init's test figures now.
Job keys, and the records written before this check, are unchanged: when nothing changed, nothing is redone.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from mashup.errors import LibraryError
from mashup.experiment.jobs import AnyJob, SourceJob, TrainJob
from mashup.experiment.own_library import counterpart
from mashup.experiment.records import artifact_result


def upstream_changed(job: AnyJob, result: dict[str, Any] | None = None) -> str | None:
    """Why ``job``'s result (a record's; by default its finished artifact's) no longer follows from its upstream
    artifact; None when it does, or when there is no finished artifact, or nothing upstream to follow."""
    if not isinstance(job, (SourceJob, TrainJob)) or (isinstance(job, TrainJob) and not job.initial):
        return None
    if result is None:  # none finished, or incomplete (the store's business): nothing to compare
        result = artifact_result(Path(job.root) / "artifacts" / job.artifact)[0]
        if result is None:
            return None
    if isinstance(job, SourceJob):
        return source_changed(job, result)
    return _init_changed(job, result)


def _init_changed(job: TrainJob, result: dict[str, Any]) -> str | None:
    """A run's step 0 is its init's test evaluation (``job.initial``): other figures mean another init."""
    curve = result.get("curve") or [{}]
    first, initial = curve[0], job.initial or {}
    if all(first.get(key) == initial.get(key) for key in ("accuracy", "loss")):
        return None
    return (f"its init {job.init or 'base'} was computed again with other test figures (accuracy "
            f"{initial.get('accuracy')}, loss {initial.get('loss')}; step 0 has {first.get('accuracy')}, "
            f"{first.get('loss')})")


def source_changed(job: SourceJob, result: dict[str, Any]) -> str | None:
    """A source registered weights with a digest: gone from the library, registered again, or other bytes on
    disk now (the library's freshness check: a stat, hashing only files whose stats changed)."""
    from mashup.library import Library
    from mashup.library.freshness import check_freshness

    library = Library(Path(job.root) / job.library)
    try:
        entry = library.get(str(result.get("checkpoint_id")))
    except LibraryError:  # no such entry, or its row cannot be read
        return f"its library entry {result.get('checkpoint_id')} is gone"
    if entry.sha256 != result.get("digest"):
        return f"its library entry {entry.id} names other weights"
    here = counterpart(Path(job.root), entry)  # its weights in this dir: of this source's run, or another's that it
    if here is not None and Path(entry.path) != here:  # was re-pointed at; registered where this dir was moved or
        check = check_freshness(replace(entry, path=str(here)))  # copied from (a run re-points it before use)
        return None if check.status == "ok" else f"the weights it registered changed ({check.reason})"
    _, stale = library.fresh([entry])
    return f"the weights it registered changed ({stale[0][1]})" if stale else None
