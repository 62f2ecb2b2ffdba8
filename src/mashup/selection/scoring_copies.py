"""Copies of float32 adapter files in the precision the slots score in, kept under the library dir.

A first halving round reads every candidate, and on a GPU it scores them in bf16: a float32 file is
read whole, copied to the device, and rounded there, so half the bytes read are dropped. On an H200
that read is most of what a first round over 1,000 SmolLM2 adapters spends outside its forwards
(9.8 GB, about 0.8 s; docs/selection.md, "Where a halving's seconds go"). The read-ahead therefore hands each
float32 block it reads to a writer thread, which saves it rounded to the slots' dtype into
``<library>/scoring-copies/``, and later selections read that copy instead: the same values the slots
held (rounding to nearest even on the host or on the device gives the same bf16), from half the bytes.
Blocks wait for the writer within ``WRITE_QUEUE_BYTES``; past that a read goes on without queueing its
copy, so a slow disk never slows a selection down to its pace, and a later selection makes the rest.

A copy is named by its source file's absolute path, size, modification and change times and inode, so
an adapter whose file changes (or moves) gets a new copy rather than a stale one; the old one, and the copy of
an adapter removed from the catalog, go at the next selection that keeps copies (``prune_library_copies``,
run where the selection is driven). The names come from that host's view of the files: on a shared dir whose
inodes differ between hosts (some FUSE mounts), a Ray worker names its copies apart from it, so they are
pruned as orphans; that costs their rewrite, never a wrong score. Deleting the dir is always safe.

Writes go to a temporary file renamed into place: a killed process leaves no half copy under a copy's name.
Where the dir cannot be written, or its disk would have less than 5% free, scoring reads the adapters' own
files, with one warning.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from mashup.errors import MashupError
from mashup.io import read_file_block_into, weight_files
from mashup.library import Library

logger = logging.getLogger(__name__)

SCORING_COPIES_DIR = "scoring-copies"  # under a library dir
_TEMP_MARK = ".tmp-"
_STALE_TEMP_SECONDS = 3600  # a temp file older than this belongs to a killed process
WRITE_QUEUE_BYTES = 256 << 20  # blocks read and waiting for the writer thread
MIN_FREE_SHARE = 0.05  # of the disk left free by the copies
MIN_FREE_BYTES = 1 << 30
_SAFETENSORS_NAMES = {torch.bfloat16: "BF16", torch.float16: "F16"}


class ScoringCopies:
    """Copies of adapter files in ``dtype`` under ``directory``: read by the read-ahead threads, written by a
    thread of their own (``submit``) or by the caller (``write``)."""

    def __init__(self, directory: Path, dtype: torch.dtype = torch.bfloat16) -> None:
        self.directory = Path(directory)
        self.dtype = dtype
        self._writable = True
        self._logged: set[str] = set()
        self._lock = threading.Lock()
        self._writer: ThreadPoolExecutor | None = None
        self._queued_bytes = 0
        self.skipped = 0  # copies not queued because the writer was behind
        _remove_stale_temps(self.directory)

    def path_for(self, adapter_dir: Path, *, allow_pickle: bool = False) -> Path | None:
        """Where the copy of a one-file adapter dir lives (it may not exist yet); None for other dirs."""
        files = weight_files(adapter_dir, allow_pickle=allow_pickle)
        return self.path_for_file(files[0]) if len(files) == 1 else None

    def path_for_file(self, weights: Path) -> Path | None:
        """``path_for`` of an adapter's one weight file, for a caller that listed its dir already."""
        if weights.suffix != ".safetensors":
            return None
        return self.directory / f"{copy_stem(weights)}.{str(self.dtype).removeprefix('torch.')}.safetensors"

    def read(self, copy: Path, factors: Sequence[tuple[str, tuple[int, ...]]],
             allocate: Callable[[torch.dtype, int], torch.Tensor]) -> torch.Tensor | None:
        """The copy's block, or None when there is none (or it is not one block of ``factors`` in ``dtype``)."""
        block = read_file_block_into(copy, factors, allocate)
        return block if block is not None and block.dtype == self.dtype else None

    def submit(self, copy: Path, block: torch.Tensor, factors: tuple[tuple[str, tuple[int, ...]], ...]) -> None:
        """``write`` on the writer thread, unless the blocks waiting for it would pass ``WRITE_QUEUE_BYTES``."""
        if not self._wanted(block):
            return
        nbytes = block.numel() * block.element_size()
        with self._lock:
            if self._queued_bytes + nbytes > WRITE_QUEUE_BYTES:
                self.skipped += 1
                return
            self._queued_bytes += nbytes
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="mashup-scoring-copies")
        self._writer.submit(self._write_queued, copy, block, factors, nbytes)

    def flush(self) -> None:
        """Wait until the copies queued so far are written."""
        if self._writer is not None:
            self._writer.submit(lambda: None).result()  # one thread: it runs after everything queued before

    def _write_queued(self, copy: Path, block: torch.Tensor, factors: tuple[tuple[str, tuple[int, ...]], ...],
                      nbytes: int) -> None:
        try:
            self.write(copy, block, factors)
        finally:
            with self._lock:
                self._queued_bytes -= nbytes

    def _wanted(self, block: torch.Tensor) -> bool:
        return self._writable and block.dtype.is_floating_point and block.element_size() > self.dtype.itemsize

    def write(self, copy: Path, block: torch.Tensor, factors: tuple[tuple[str, tuple[int, ...]], ...]) -> None:
        """Save ``block`` (a source file's data, ``factors`` back to back) rounded to ``dtype`` as ``copy``, if
        that makes it smaller."""
        if not self._wanted(block):
            return
        # torch's cast, though on this thread it starts an OpenMP team of its own (the read threads copy with
        # numpy to avoid one): a numpy round-to-nearest-even took 5.4 ms an adapter against 0.6 ms, and with it
        # the writer fell behind, so on 2 cores the runs making the copies took up to 2.1x as long
        rounded = block.to(self.dtype)
        temp = copy.with_name(f"{copy.name}{_TEMP_MARK}{os.getpid()}-{threading.get_ident()}")
        try:
            copy.parent.mkdir(parents=True, exist_ok=True)
            if not _room_for(copy.parent, rounded.numel() * rounded.element_size()):
                self._writable = False
                self._log_once(logging.WARNING, "not writing more scoring copies under %s: its disk is nearly full",
                               self.directory)
                return
            with open(temp, "wb") as handle:
                handle.write(_header(factors, self.dtype))
                handle.write(memoryview(rounded.view(torch.uint8).numpy()))
            os.replace(temp, copy)
        except Exception as exc:  # a cache: a failed write (disk full, read-only dir) must not fail the selection
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            self._writable = False
            self._log_once(logging.WARNING, "cannot write scoring copies under %s (%s): reading the adapters' own "
                           "files", self.directory, exc)
            return
        self._log_once(logging.INFO, "keeping %s copies of %s adapters for scoring under %s",
                       str(self.dtype).removeprefix("torch."), str(block.dtype).removeprefix("torch."), self.directory)

    def _log_once(self, level: int, message: str, *args: object) -> None:
        """Each message once per instance: copies are written by the hundred."""
        with self._lock:
            if message in self._logged:
                return
            self._logged.add(message)
        logger.log(level, message, *args)


def copy_stem(weights: Path) -> str:
    """The name a copy of ``weights`` has (before its dtype): its absolute path and the stats the catalog's
    freshness check uses. A write changes ctime, which no copy tool can set, so changed bytes get a new name."""
    stat = weights.stat()
    key = f"{os.path.abspath(weights)}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def prune_library_copies(copies_dir: Path, library_dir: Path, scored: Sequence[str]) -> None:
    """Drop the copies that neither a catalog entry nor an adapter dir scored now (``scored``) reads any more:
    housekeeping of a cache, so a catalog that cannot be read now is a warning, not a failed selection."""
    if not copies_dir.is_dir():
        return
    try:
        adapter_dirs = [*Library(library_dir).paths(), *scored]
        removed = prune_orphans(copies_dir, _single_weight_files(adapter_dirs))
    except (MashupError, OSError) as exc:
        logger.warning("not pruning the scoring copies under %s: %s", copies_dir,
                       exc.line() if isinstance(exc, MashupError) else exc)
        return
    if removed:
        logger.info("removed %d scoring copies of adapters changed, moved or removed since (%s)", removed, copies_dir)


def _single_weight_files(adapter_dirs: Sequence[str]) -> Iterator[Path]:
    """Each dir's weight file, for dirs that hold one (only those get copies)."""
    for adapter_dir in adapter_dirs:
        try:
            files = weight_files(Path(adapter_dir), allow_pickle=True)
        except (MashupError, OSError):  # gone or emptied: nothing of it to keep
            continue
        if len(files) == 1:
            yield files[0]


def prune_orphans(directory: Path, current: Iterable[Path]) -> int:
    """Delete the copies that none of ``current`` (the adapters' weight files still in use) names: their adapter
    changed, moved or left the catalog, so no selection reads them again. Returns how many went."""
    if not directory.is_dir():
        return 0
    keep = set()
    for weights in current:
        with contextlib.suppress(OSError):  # gone since it was listed: its copy is an orphan too
            keep.add(copy_stem(weights))
    removed = 0
    for copy in directory.glob("*.safetensors"):  # not the temp files (".tmp-" after the suffix): see above
        if copy.name.split(".", 1)[0] not in keep:
            with contextlib.suppress(OSError):  # another process pruned it first
                copy.unlink()
                removed += 1
    return removed


@functools.lru_cache(maxsize=16)
def _header(factors: tuple[tuple[str, tuple[int, ...]], ...], dtype: torch.dtype) -> bytes:
    """A safetensors header for ``factors`` back to back in ``dtype``, as safetensors writes a one-dtype file.

    Written here, not by ``safetensors.torch.save_file``: that takes one tensor per name, and building a
    SmolLM2 adapter's 420 views and saving them took 30 ms an adapter on a 2-core host, against 2 ms for
    the cast; a library's adapters share one header, so it is built once."""
    entries, offset = {}, 0
    for name, shape in factors:
        size = dtype.itemsize * math.prod(shape)
        entries[name] = {"dtype": _SAFETENSORS_NAMES[dtype], "shape": list(shape),
                         "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as safetensors pads it
    return struct.pack("<Q", len(header)) + header


def _room_for(directory: Path, nbytes: int) -> bool:
    """Whether ``nbytes`` more leave the disk at least ``MIN_FREE_SHARE`` (and 1 GiB) free: a cache must not fill
    the disk that the library and its outputs live on."""
    usage = shutil.disk_usage(directory)
    return usage.free - nbytes >= max(MIN_FREE_BYTES, MIN_FREE_SHARE * usage.total)


def _remove_stale_temps(directory: Path) -> None:
    cutoff = time.time() - _STALE_TEMP_SECONDS
    try:
        for temp in directory.glob(f"*{_TEMP_MARK}*"):
            if temp.stat().st_mtime < cutoff:
                temp.unlink(missing_ok=True)
    except OSError:
        pass  # another process removed it first, or the dir cannot be listed: writes will say so
