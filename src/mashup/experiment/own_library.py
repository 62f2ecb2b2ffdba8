"""The experiment's own library: the sources it registers from its scratch runs, kept pointing into this dir.

The library keeps absolute paths: an entry names ``<out>/artifacts/<train artifact>/adapter`` (or ``model``) as it
was when registered. In a dir moved since (the old one gone) or copied (``cp -r``: the old one still there), an
entry naming another experiment dir's ``artifacts/<name>/...`` is re-pointed at this dir's ``artifacts/<name>/...``
when that holds the same weights, so the merges and selections to come read this dir's files, and deleting or
editing the original changes nothing here. Either way the entry is re-pointed in place, in one transaction
(``Library.relocate``, ``copied`` where the old dir is still there), keeping what it holds. A source trained again
to the same bytes under another job key re-points its entry at the new run as it registers (``Library.add`` with
``repoint``: only the entries of the same source).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mashup.errors import AlreadyRegistered, LibraryError
from mashup.library import Library
from mashup.library.records import CheckpointRecord
from mashup.training import INIT_WEIGHTS

if TYPE_CHECKING:
    from mashup.experiment.jobs import SourceJob

logger = logging.getLogger(__name__)
TRAIN_PREFIX = "train-"  # a training run's artifact name: ``<kind>-<key>`` (``jobs.Job.artifact``)


def _source_weights(job: SourceJob) -> Path:
    """Where a source's weights are in this experiment dir: its training run's adapter (or model), resolved."""
    return (_train_dir(job) / ("adapter" if job.mode == "lora" else "model")).resolve()


def _train_dir(job: SourceJob) -> Path:
    return Path(job.root) / "artifacts" / job.train_artifact


def register_source(job: SourceJob, tmp: Path) -> dict[str, Any]:
    """The source job: register the training run's weights in the experiment's library and name the entry. An entry
    registered for them already (here, or where this dir was moved or copied from) is kept if it holds these weights
    (re-pointed here), dropped if not. The same weights registered by another training run of this source (task, lr
    and seed: computed again under another job key, say another ``eval_every``, to the same bytes) are re-pointed
    here too; registered for another source, they are refused, even where that source's run dir is gone."""
    weights = _source_weights(job)
    library = Library(Path(job.root) / job.library)
    entries = library.list()
    known = _kept_entries(library, entries, job, weights)
    if not known:  # else registered by a run killed before it recorded this unit: that entry is reused
        reference = str(_train_dir(job) / INIT_WEIGHTS) if job.mode == "lora" else None
        try:
            known = library.add([weights], task=job.data.name, base=job.base, init_reference=reference,
                                metadata=_metadata(job), repoint=[r.id for r in entries if _of_source(r, job)])
        except AlreadyRegistered as exc:
            raise _same_weights_error(library.get(exc.checkpoint_id), job, weights) from None
    return {"checkpoint_id": known[0].id, "digest": known[0].sha256, "task": job.data.name, "lr": job.lr,
            "seed": job.seed}


def _kept_entries(library: Library, entries: list[CheckpointRecord], job: SourceJob,
                  weights: Path) -> list[CheckpointRecord]:
    """The entries registered for ``weights`` (here, or where this dir was moved or copied from) that hold them,
    re-pointed here; the others are removed from ``library``."""
    kept: list[CheckpointRecord] = []
    for entry in [r for r in entries if counterpart(Path(job.root), r) == weights]:
        why = _follow(library, entry, weights)
        if why is None:
            kept.append(entry)
            continue
        # its training run was computed again since (other bytes): register those instead
        logger.warning("library entry %s of source %s: %s; registering the weights at %s instead", entry.id,
                       job.data.name, why, weights)
        library.remove(entry.id)
    return kept


def _same_weights_error(other: CheckpointRecord, job: SourceJob, weights: Path) -> LibraryError:
    """Two sources trained to the same weights: one library entry cannot stand for both."""
    lr, seed = other.metadata.get("lr"), other.metadata.get("seed")
    return LibraryError(f"source {job.data.name} (lr {job.lr}, seed {job.seed}) trained to the same weights as source "
                        f"{other.task} (lr {lr}, seed {seed}), registered as {other.id} ({other.path})", str(weights),
                        "two sources with the same weights cannot share the experiment's library: check that their "
                        "task data, lr or seed differ")


def _metadata(job: SourceJob) -> dict[str, Any]:
    return {"source": "mashup experiment", "lr": job.lr, "seed": job.seed}


def _of_source(entry: CheckpointRecord, job: SourceJob) -> bool:
    """Whether ``entry`` was registered by a training run of ``job``'s source (any run: any job key)."""
    return entry.task == job.data.name and all(entry.metadata.get(k) == v for k, v in _metadata(job).items())


def repoint_library(root: Path, library_dir: Path) -> None:
    """Re-point every entry of the experiment's own library that names another experiment dir's artifacts at the
    same weights in ``root`` (see the module doc); other bytes here leave it, for its source to be found stale."""
    library = Library(library_dir)
    if not library.db_path.exists():
        return
    for entry in library.list():
        here = counterpart(root, entry)
        if here is None or Path(entry.path) == here or not here.is_dir():
            continue
        why = _follow(library, entry, here)
        if why:
            logger.warning("library entry %s not re-pointed at %s: %s; its source is registered or computed again",
                           entry.id, here, why)


def counterpart(root: Path, entry: CheckpointRecord) -> Path | None:
    """This dir's ``artifacts/<train artifact>/<weights>``, resolved as entry paths are, for an entry registered from
    a training run's artifact (in this dir, or one it was moved or copied from; ``artifacts`` may be a link to a dir
    of another name); None for any other entry."""
    old = Path(entry.path)
    if not old.parent.name.startswith(TRAIN_PREFIX) or old.name not in ("adapter", "model"):
        return None
    return (root / "artifacts" / old.parent.name / old.name).resolve()


def _follow(library: Library, entry: CheckpointRecord, here: Path) -> str | None:
    """Check ``entry`` against the weights at ``here``, its counterpart in this dir, re-pointing it there when it
    names another dir's: None when they are the weights it registered, else why not (the entry is left as it was)."""
    if Path(entry.path) == here:
        stale = library.fresh([entry])[1]
        return stale[0][1] if stale else None
    check = library.relocate(entry, here, copied=Path(entry.path).is_dir())
    return None if check.status == "ok" else check.reason
