"""Adapter files read ahead on threads while the forwards run, so that on a GPU loads and forwards overlap.

A first halving round loads every candidate for a few questions each. On an H200 a SmolLM2 forward
over 1,000 adapters x 8 questions took about as long as loading them the plain way: each load is a
host read of the file plus a copy from pageable memory that the host waits for, and the GPU idles
meanwhile. Here a few threads read each adapter's one-block file (``mashup.io.read_dir_block_into``) into
host memory, pinned where the device is CUDA, in the order the engine will want them; the engine's
copy into a slot is then an asynchronous transfer queued behind the forward in flight.

Off by default on a CPU (``default_read_ahead``): there the threads take cores from the computation
they would overlap. On 2 cores a live halving of 64 SmolLM2 adapters took as long either way, and
the prefilter's signals for the same adapters took 41-54 ms an adapter against 28-33 ms without."""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from mashup.io import read_file_block_into, weight_files
from mashup.selection.scoring_copies import ScoringCopies

# Host memory that reads may hold ahead of use. A first round on a GPU groups about 128 SmolLM2
# adapters (10 MB each in float32) per forward: this keeps most of the next group ready.
READ_AHEAD_BYTES = 1 << 30
# A first round on 1,000 float32 SmolLM2 adapters reads about 10 GB, 1.25 GB for each forward of 128 of
# them. On an H200's 16-core host (benchmarks/read_ahead.py, the 1,000 from the page cache into pinned
# memory) 1 thread read 4.8 GB/s, 2 read 8.3, 4 read 6.8, 8 read 14.5 and 12 read 13.0; yet a live
# halving on commonsense_qa took 4.96 and 5.86 s with 4 threads against 5.31 and 7.20 s with 8
# (alternating in one process): past a few threads the reads are not what the forwards wait for. Half
# the host's cores at most, so that the thread launching the forwards keeps one. Read at construction.
READ_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))


# A halving loads its survivors again in each later round, and learns which they are only once the last
# round's forward is ranked: a read then is a wait. On a GPU with memory to spare the blocks it loaded
# stay there (``AdapterReadAhead.keep``); 1,000 float32 SmolLM2 adapters take 9.8 GB, 7% of an H200.
DEVICE_KEEP_SHARE = 0.25  # of the device memory free once the base and its slots are loaded
KEEP_CHUNK_ROWS = 64  # kept blocks per allocation


def default_read_ahead(device: torch.device) -> bool:
    """Read ahead where the computation is not on the host's cores: on CUDA."""
    return device.type == "cuda"


def device_keep_bytes(device: torch.device) -> int:
    """Bytes of loaded blocks worth keeping on ``device``: a share of its free memory on CUDA, else none
    (on a CPU the page cache already holds the files)."""
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return int(DEVICE_KEEP_SHARE * free)


class AdapterReadAhead:
    """Reads adapter dirs into host blocks ahead of ``take``, within a byte budget, on worker threads.

    ``factors`` is the storage layout (name, shape) that a one-block file must match, ``device`` where
    the blocks are copied to (pinned host memory for CUDA), ``threads`` default ``READ_THREADS``; a dir
    whose file does not (several files, several dtypes) reads as None, and the caller falls back to
    loading its tensors and joining them (``mashup.io.read_dir_flat``). Blocks handed to ``keep`` (up to
    ``keep_bytes``) are what later ``take``s of their dir return, without reading it again. With ``copies``,
    a dir's copy in the scoring precision is read where there is one, and made where there is not.
    """

    def __init__(self, factors: Sequence[tuple[str, tuple[int, ...]]], device: torch.device, *,
                 allow_pickle: bool = False, threads: int | None = None, budget_bytes: int = READ_AHEAD_BYTES,
                 keep_bytes: int = 0, copies: ScoringCopies | None = None) -> None:
        self.factors = tuple(factors)  # a tuple: mashup.io takes it as its cache key as is
        self.pin = device.type == "cuda"  # blocks bound for a GPU: the copy there runs without the host
        self.allow_pickle = allow_pickle
        # budgeted at 4 bytes a value: the widest dtype an adapter file holds in practice (float32)
        self.block_bytes = 4 * sum(math.prod(shape) for _, shape in self.factors)
        self.budget_bytes = budget_bytes
        self._pool = ThreadPoolExecutor(threads or READ_THREADS, thread_name_prefix="mashup-read-ahead")
        self._waiting: deque[Path] = deque()  # requested, not submitted yet (over the budget)
        self._reads: dict[Path, Future[torch.Tensor | None]] = {}
        self.keep_bytes = keep_bytes
        self.copies = copies
        self._kept: dict[Path, torch.Tensor] = {}  # rows of _chunks
        self._chunks: list[torch.Tensor] = []
        self._free_rows = 0  # in the last chunk

    def request(self, adapter_dirs: Iterable[Path]) -> None:
        """Queue reads of these dirs, in this order, after those already queued (repeats are ignored)."""
        queued = set(self._waiting) | self._reads.keys() | self._kept.keys()
        for adapter_dir in adapter_dirs:
            if adapter_dir not in queued:
                self._waiting.append(adapter_dir)
                queued.add(adapter_dir)
        self._submit()

    def take(self, adapter_dir: Path) -> torch.Tensor | None:
        """The dir's block (kept, else waiting for its read; read now if it was never requested), or None."""
        if adapter_dir in self._kept:
            return self._kept[adapter_dir]
        future = self._reads.pop(adapter_dir, None)
        if future is None:
            if adapter_dir in self._waiting:
                self._waiting.remove(adapter_dir)
            return self._read(adapter_dir)
        self._submit()
        return future.result()

    def keep(self, adapter_dir: Path, loaded: torch.Tensor) -> None:
        """Hold a copy of the dir's block as loaded (a slot's row, on the device) for later ``take``s, within
        ``keep_bytes``. Copies go into rows of a few large tensors rather than one allocation each: the
        caching allocator would ask CUDA for each new block, 1,000 of them in a first round."""
        if adapter_dir in self._kept:
            return
        chunk = self._chunks[-1] if self._chunks else None
        if chunk is None or self._free_rows == 0:
            room = self.keep_bytes // (loaded.numel() * loaded.element_size()) - len(self._kept)
            if room <= 0:
                return
            chunk = torch.empty(min(KEEP_CHUNK_ROWS, room), loaded.numel(), dtype=loaded.dtype, device=loaded.device)
            self._chunks.append(chunk)
            self._free_rows = len(chunk)
        if chunk.shape[1] != loaded.numel() or chunk.dtype != loaded.dtype:
            return  # only a slot's rows are kept, and they all have one shape
        row = chunk[len(chunk) - self._free_rows]
        row.copy_(loaded.view(-1))
        self._free_rows -= 1
        self._kept[adapter_dir] = row

    def close(self) -> None:
        """Drop the reads not started yet and let the threads end once the running ones finish."""
        self._waiting.clear()
        self._reads.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def queued(self) -> int:
        """Reads requested and not taken yet."""
        return len(self._waiting) + len(self._reads)

    def _submit(self) -> None:
        # at least one read is always under way, whatever the budget: an adapter larger than it still loads
        while self._waiting and (not self._reads or (len(self._reads) + 1) * self.block_bytes <= self.budget_bytes):
            adapter_dir = self._waiting.popleft()
            self._reads[adapter_dir] = self._pool.submit(self._read, adapter_dir)

    def _read(self, adapter_dir: Path) -> torch.Tensor | None:
        # read, not mapped and copied (see read_dir_block_into), into a new block: the transfer to the GPU can
        # run after this returns. The dir is listed once, for its copy's name and for the read
        files = weight_files(adapter_dir, allow_pickle=self.allow_pickle)
        if len(files) != 1:
            return None
        copy = None if self.copies is None else self.copies.path_for_file(files[0])
        block = None if copy is None else self.copies.read(copy, self.factors, self._allocate)
        if block is None:
            block = read_file_block_into(files[0], self.factors, self._allocate)
            if copy is not None and block is not None:
                self.copies.submit(copy, block, self.factors)
        return block

    def _allocate(self, dtype: torch.dtype, numel: int) -> torch.Tensor:
        return torch.empty(numel, dtype=dtype, pin_memory=self.pin)
