"""Whether a catalog entry still describes the bytes on disk.

The cheap check compares each weight file's size, mtime, ctime and inode with those recorded when it
was hashed; only when they differ is the file hashed again. Same bytes: the entry is fresh (with new
stats to record). Other bytes or missing files: the entry is stale, with the reason. A LoRA's
adapter_config.json is read again each time (about 30 us): its rank, alpha, rsLoRA, DoRA and target
modules change what the weights compute, its exclude_modules, layers_to_transform and layers_pattern
which of them PEFT loads, and the digest covers the weights alone. A full fine-tune's entry whose tensors are
not those of the files transformers loads (registered when every weight file was read: Mistral's
consolidated.safetensors too) is stale, found from the headers of a dir that holds such other files.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from mashup.errors import MashupError
from mashup.io import loaded_weight_files, sha256_files, stat_files, tensor_shapes, weight_files
from mashup.library.records import CheckpointRecord, lora_config_change

Status = Literal["ok", "missing", "changed"]
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Freshness:
    record: CheckpointRecord
    status: Status
    reason: str | None = None
    new_stats: list[dict[str, Any]] | None = None  # the stats changed, the bytes did not (even where stale for more)
    digest: str | None = None  # the weights' sha256 where this check hashed them


def check_freshness(record: CheckpointRecord, *, rehash: bool = False) -> Freshness:
    """Compare ``record`` with its files; ``rehash`` hashes even when the stats are unchanged (verify)."""
    freshness = _check_bytes(record, rehash)
    if freshness.status == "ok" and (change := loaded_tensors_change(record)):
        # the bytes check stands: its new stats are stored, so the same bytes are not hashed again each check
        return dataclasses.replace(freshness, status="changed", reason=change)
    return freshness


def loaded_tensors_change(record: CheckpointRecord) -> str | None:
    """Why a full fine-tune's entry, its bytes unchanged, lists other tensors than the files transformers loads
    hold, or None: it was registered from every weight file, and selection would refuse it as shaped unlike its
    base. Only a dir holding weight files beside the loaded ones is read, and of those the headers alone."""
    path = Path(record.path)
    if record.kind != "full":
        return None
    try:
        files, loaded = weight_files(path, allow_pickle=True), loaded_weight_files(path, allow_pickle=True)
        others = [f.name for f in files if f not in set(loaded)]
        if not others:  # registered from these same files
            return None
        names = {name for f in loaded for name in tensor_shapes(f)}
    except MashupError as exc:
        return exc.line()
    except OSError as exc:
        return f"cannot read {path} ({exc.strerror})"
    differ = sorted(set(record.shapes) - names) + sorted(names - set(record.shapes))
    if not differ:
        return None
    return (f"the entry lists other tensors than the files transformers loads (e.g. {differ[0]}): registered when "
            f"mashup read {', '.join(others)} too; remove the entry and add the checkpoint again")


def _check_bytes(record: CheckpointRecord, rehash: bool) -> Freshness:
    """Whether ``record``'s weight files still hold the bytes it was registered with (and a LoRA's config its
    settings)."""
    path = Path(record.path)
    if not path.is_dir():
        return Freshness(record, "missing", f"checkpoint dir {path} is gone")
    if record.kind == "lora" and (change := lora_config_change(record)):  # the weights' digest does not cover it
        return Freshness(record, "changed", f"{change} in {path}")
    try:
        files = weight_files(path, allow_pickle=True)
        current = stat_files(files)
    except (MashupError, OSError):
        return Freshness(record, "missing", f"no weight files left in {path}")
    names = [s["name"] for s in current]
    stored = record.file_stats
    if stored and [s["name"] for s in stored] != names:
        return Freshness(record, "changed", f"weight files are now {', '.join(names)}, were "
                                            f"{', '.join(s['name'] for s in stored)}")
    if stored == current and not rehash:
        return Freshness(record, "ok")
    try:
        digest = sha256_files(files)
    except OSError as exc:
        return Freshness(record, "missing", f"cannot read {path} ({exc.strerror})")
    if digest != record.sha256:
        return Freshness(record, "changed", f"weights changed since registration (sha256 {record.sha256[:12]} "
                                            f"now {digest[:12]}) in {path}", digest=digest)
    return Freshness(record, "ok", new_stats=None if stored == current else current, digest=digest)


def parallel_map(func: Callable[[T], R], items: Sequence[T], workers: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> list[R]:
    """``[func(x) for x in items]`` on threads (hashing and safetensors reads release the GIL), in order.

    On an error the items not started yet are dropped, and the first error in item order is raised.
    """
    total = len(items)
    with ThreadPoolExecutor(max_workers=max(1, min(workers or default_workers(), total))) as pool:
        futures = [pool.submit(func, item) for item in items]
        for count, future in enumerate(as_completed(futures), 1):
            if future.exception() is not None:
                for other in futures:
                    other.cancel()
                break
            if progress:
                progress(count, total)
    for future in futures:
        if not future.cancelled() and future.exception() is not None:
            raise future.exception()  # type: ignore[misc]
    return [f.result() for f in futures]


def default_workers() -> int:
    return min(8, 2 * (os.cpu_count() or 1))
