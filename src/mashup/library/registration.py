"""What ``Library.add`` does before its one write: find which dirs are new (a re-scan skips the registered ones, and
those whose registration is stale, with a warning; a plain add refuses a stale one, and a registered one before
hashing it again), inspect and hash them (in parallel), complete their records (id, time, base as stored and its
identity), and sort them against the catalog's rows (``sort_records``); what it returns (``Added``). The catalog's
write is ``catalog``'s."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timezone
from pathlib import Path

from mashup.errors import AlreadyRegistered, CheckpointError, LibraryError, MashupError
from mashup.io import sha256_files, weight_files
from mashup.library.freshness import Freshness, check_freshness, parallel_map
from mashup.library.identity import resolve_identity, stored_base
from mashup.library.records import CheckpointRecord, merge_lineage
from mashup.library.rows import StaleEntry

logger = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


class Added(list[CheckpointRecord]):
    """The records ``Library.add`` registered, in order (new entries, and the relocated and repaired among them);
    ``skipped`` holds the checkpoints a recursive add found already registered with the same weights (each with its
    registered id and the path where it was found); ``relocated`` the entries among those added that were re-pointed
    at their checkpoint's new dir (moved, or re-pointed on request); ``repaired`` those among the added that replaced
    an entry of their id, or at their path, that could not be read (see ``Library.entries``); ``stale`` the
    registrations a recursive add found stale and left as they are, the checkpoints found for them not added."""

    def __init__(self, added: Sequence[CheckpointRecord] = (), skipped: Sequence[CheckpointRecord] = (),
                 relocated: Sequence[CheckpointRecord] = (), repaired: Sequence[CheckpointRecord] = (),
                 stale: Sequence[StaleEntry] = ()) -> None:
        super().__init__(added)
        self.skipped = list(skipped)
        self.relocated = list(relocated)
        self.repaired = list(repaired)
        self.stale = list(stale)


def stored_init_reference(init_reference: str | None) -> str | None:
    """An init reference as registration stores it: absolute, not resolved (a symlinked file, e.g. in the HF
    cache, keeps its name and suffix); a missing one is refused now, else a typo shows at merge time."""
    if not init_reference:
        return None
    if not Path(init_reference).expanduser().exists():
        raise CheckpointError("init reference not found", str(init_reference),
                              "pass the file (or dir) of the LoRA's starting weights, e.g. adapter_init.safetensors")
    return str(Path(init_reference).expanduser().absolute())


def check_registered(registered: CheckpointRecord, found: Path) -> Freshness | StaleEntry:
    """Whether ``registered`` still serves for the checkpoint found at ``found``: its freshness check, or a
    ``StaleEntry`` (files gone, moved or changed: selection would have nothing to rank)."""
    check = check_freshness(registered)
    if check.status == "ok":
        return check
    where = "" if Path(registered.path) == found.resolve() else f" at {registered.path}"
    return StaleEntry(registered, f"registered as {registered.id}{where}, which is stale ({check.reason})", str(found),
                      check)


def check_at_paths(at_paths: list[CheckpointRecord]) -> list[Freshness | StaleEntry]:
    """The checks of the entries registered at the dirs a plain add is given (``at_paths``); a dir gone is not
    checked: it is a path to report, or a move to relocate."""
    return [check_registered(known, Path(known.path)) for known in at_paths if Path(known.path).is_dir()]


def refuse_at_paths(checks: list[Freshness | StaleEntry], repoint: Collection[str] | None) -> None:
    """A plain add stops at a dir given whose registration there (``checks``, see ``check_at_paths``) is stale: the
    user named that dir, and registering it again would leave a second, stale entry at its path. One that serves
    is refused as registered before the dir is hashed again (unless ``repoint`` names it, see ``sort_records``)."""
    for check in checks:
        if isinstance(check, StaleEntry):
            raise check
    for check in checks:
        if repoint is None or check.record.id not in repoint:
            known = check.record
            raise AlreadyRegistered(f"already registered as {known.id} ({known.path})", known.path,
                                    "nothing to do, or remove the old entry first", known.id)


def inspect_new(dirs: list[Path], registered: list[CheckpointRecord], inspect: Callable[[Path], CheckpointRecord],
                workers: int | None, progress: Progress | None
                ) -> tuple[list[CheckpointRecord], list[Freshness], list[StaleEntry]]:
    """Inspect and hash ``dirs`` in parallel: (their new records, the checks of those already registered at
    their path, those whose registration there is stale). A re-scan skips a registered dir without hashing it
    again, while its registration serves; a stale one it skips too, leaving its entry as it is."""
    at_path = {Path(r.path): r for r in registered}

    def one(path: Path) -> CheckpointRecord | Freshness | StaleEntry:
        known = at_path.get(path.resolve())
        return inspect(path) if known is None else check_registered(known, path)

    found = parallel_map(one, dirs, workers, progress)
    return ([f for f in found if isinstance(f, CheckpointRecord)], [f for f in found if isinstance(f, Freshness)],
            [f for f in found if isinstance(f, StaleEntry)])


def checks_of_registered(new: list[CheckpointRecord], rescanned: list[Freshness], registered: list[CheckpointRecord],
                         stale: list[StaleEntry]) -> tuple[list[Freshness], list[StaleEntry]]:
    """The freshness checks behind a recursive add's skips: of registrations re-scanned at their own path, and of
    those holding the weights of a checkpoint found at another path (skipped only while they serve; a stale one is
    returned apart, the checkpoint found for it not to be added). One whose dir is gone is not checked: the
    checkpoint moved, and the add re-points its entry at the path found."""
    by_id = {r.id: r for r in registered}
    checks: dict[str, Freshness | StaleEntry] = {c.record.id: c for c in [*rescanned, *stale]}  # checked once
    for record in new:
        if record.id in by_id and record.id not in checks and Path(by_id[record.id].path).is_dir():
            checks[record.id] = check_registered(by_id[record.id], Path(record.path))
    return ([c for c in checks.values() if isinstance(c, Freshness)],
            [c for c in checks.values() if isinstance(c, StaleEntry) and c not in stale])


def name_moved_weights(stale: list[StaleEntry], new: list[CheckpointRecord]) -> list[StaleEntry]:
    """``stale``, each entry whose registered weights a re-scan found in one other dir (``new``) while its own dir
    holds them no more (moved, other weights written at its path since) naming that dir and the fix that keeps the
    entry: the checkpoint at the old path moved away, an add re-points the entry at its weights' new dir."""
    found: dict[str, list[str]] = {}
    for record in new:
        found.setdefault(record.sha256, []).append(record.path)
    named = []
    for entry in stale:
        old, dirs = entry.record.path, found.get(entry.record.sha256, [])
        if len(dirs) != 1 or dirs[0] == old or _holds_weights(entry):
            named.append(entry)  # a copy of weights still registered where they are: not a move
            continue
        fix = (f"its registered weights are now at {dirs[0]}: move the checkpoint at {old} to another dir, then add "
               f"both (the entry follows its weights to {dirs[0]}), or `mashup library remove {entry.record.id}`, "
               "then add both (a new entry, without the old one's task and lineage)")
        named.append(StaleEntry(entry.record, entry.what, entry.where or old, entry.check, fix))
    return named


def _holds_weights(entry: StaleEntry) -> bool:
    """Whether a stale entry's dir still holds its registered weights (asked only of one whose weights were found
    elsewhere): by the digest its freshness check hashed, else hashed now (one stale for its settings, or found
    so by its file names or stats alone, may hold them still)."""
    record = entry.record
    if entry.check is not None and entry.check.digest is not None:
        return entry.check.digest == record.sha256
    try:
        return sha256_files(weight_files(Path(record.path), allow_pickle=True)) == record.sha256
    except (MashupError, OSError):
        return False


def complete_records(records: list[CheckpointRecord]) -> None:
    """What registration adds to inspected records: the id, the time, the base as stored (a local path
    absolute, see ``stored_base``), its content identity, and a merge's lineage from its report (``merge_lineage``;
    the lineage the add gives wins where both name a key)."""
    for record in records:
        record.base_model = stored_base(record.base_model)
    identities = {b: resolve_identity(b) for b in {r.base_model for r in records}}
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for record in records:
        record.id, record.created = record.sha256[:12], created
        record.base_identity = identities[record.base_model]
        record.lineage = {**merge_lineage(record), **record.lineage}


def refuse_duplicates(records: list[CheckpointRecord]) -> None:
    seen: dict[str, str] = {}
    for record in records:
        if record.id in seen:
            raise LibraryError("the same weights were given twice", f"{seen[record.id]} and {record.path}",
                               "pass each checkpoint once")
        seen[record.id] = record.path


def refuse_registered(records: list[CheckpointRecord], existing: dict[str, tuple[str, str]]) -> None:
    """Refuse a record whose id is registered (``existing``: each id's path and digest)."""
    clash = next((r for r in records if r.id in existing), None)
    if clash:
        raise AlreadyRegistered(f"already registered as {clash.id} ({existing[clash.id][0]})", clash.path,
                                "nothing to do, or remove the old entry first", clash.id)


@dataclasses.dataclass
class SortedRecords:
    """How ``Library.add`` sorts the records it is given against the catalog's rows."""

    added: list[CheckpointRecord]  # to insert, the repaired among them
    moved: list[CheckpointRecord]  # whose entries are re-pointed at their dirs
    skipped: list[CheckpointRecord]
    replaced: set[str]  # ids of unreadable entries deleted for the records added (repaired)
    repaired: list[CheckpointRecord]  # those among the added that replace an unreadable entry


def sort_records(records: list[CheckpointRecord], existing: dict[str, tuple[str, str]], unreadable: set[str], *,
                 skip_registered: bool, repoint: Collection[str] | None) -> SortedRecords:
    """Sort ``records`` against the entries ``existing`` (each id's path and digest; ``unreadable``: ids of those
    that cannot be read, of the records' ids or at their paths). Weights already registered (same digest) are
    skipped with ``skip_registered``, else refused; the same weights given twice are refused; weights registered at
    a dir that is gone (moved; given ``repoint``, instead: anywhere for an id in it, and no other) re-point that
    entry at the new dir, keeping what it holds but what the add gives (``moved_entry``). An entry that cannot be
    read, of the same id or at the same path (other weights written there since), is replaced by a plain add, with a
    warning (``log_insert``): registering the checkpoint again is how such an entry is repaired, and it leaves one
    entry at that path. A re-scan (``skip_registered``) leaves such a record out with a warning instead (even where
    its dir is gone): it would drop what the entry held (task, lineage) without being asked."""
    unreadable_at = {existing[i][0] for i in unreadable}
    tied = {r.id for r in records if r.id in unreadable or r.path in unreadable_at}  # to an unreadable entry
    replaced = set() if skip_registered else unreadable
    existing = {i: found for i, found in existing.items() if i not in replaced}
    gone = {r.id for r in records if r.id in existing and r.id not in unreadable  # skipped with a warning
            and (r.id in repoint if repoint is not None else not Path(existing[r.id][0]).is_dir())}
    # a re-scan leaves a record tied to an unreadable entry where it is, moved or not (one entry per path)
    moved = [r for r in records if r.id in gone and existing[r.id][1] == r.sha256
             and not (skip_registered and r.id in tied)]
    skipped = [r for r in records if skip_registered and r.id not in gone
               and existing.get(r.id, ("", ""))[1] == r.sha256]
    left = {r.id for r in skipped + moved} | (tied if skip_registered else set())
    added = [r for r in records if r.id not in left]
    refuse_duplicates(added + moved)
    refuse_registered(added, existing)
    return SortedRecords(added, moved, skipped, replaced, [r for r in added if r.id in tied])


def log_skipped(skipped: list[CheckpointRecord], stale: list[StaleEntry]) -> None:
    """A re-scan's skips: how many were registered already, and a warning for each stale registration."""
    if skipped:
        logger.info("%d checkpoint(s) already registered with the same weights: skipped", len(skipped))
        logger.debug("skipped as registered: %s", ", ".join(f"{r.path} ({r.id})" for r in skipped))
    for entry in stale:
        logger.warning("%s", entry.skipped_line())
