"""One-block reads: the tensors of a one-dtype safetensors file as one flat tensor, mapped or read in one go."""

from __future__ import annotations

import functools
import json
import math
import mmap
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from mashup.io.files import load_weight_dir, weight_files

if TYPE_CHECKING:
    import torch

_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}  # torch names
_MAX_HEADER = 100 << 20


def read_dir_block(model_dir: Path, expected: Sequence[tuple[str, tuple[int, ...]]], *, allow_pickle: bool = False
                   ) -> torch.Tensor | None:
    """``read_tensor_block`` of a dir whose weights are one file; None for a dir of several files."""
    files = weight_files(model_dir, allow_pickle=allow_pickle)
    return read_tensor_block(files[0], expected) if len(files) == 1 else None


def read_dir_flat(model_dir: Path, expected: Sequence[tuple[str, tuple[int, ...]]], *, allow_pickle: bool = False
                  ) -> torch.Tensor | None:
    """A dir's tensors back to back in ``expected`` order (name, shape), as one flat tensor: the mapped block
    where its file is laid out so (``read_dir_block``), else loaded and joined (in their widest dtype).
    None when its tensors are not exactly ``expected``."""
    import torch

    block = read_dir_block(model_dir, expected, allow_pickle=allow_pickle)
    if block is not None:
        return block
    tensors = load_weight_dir(model_dir, allow_pickle=allow_pickle)
    if {name: tuple(t.shape) for name, t in tensors.items()} != dict(expected):
        return None
    return torch.cat([tensors[name].reshape(-1) for name, _ in expected])


def read_tensor_block(path: Path, expected: Sequence[tuple[str, tuple[int, ...]]] | None = None
                      ) -> torch.Tensor | None:
    """The data of a safetensors file holding exactly ``expected`` (names and shapes, in data order; None:
    whatever it holds), in one dtype: one flat tensor mapped from the file. None when the file is laid out
    otherwise (or unreadable).

    ``load_file`` builds one tensor per name, and a LoRA adapter has hundreds of small ones; its callers
    copy them one by one. A file saved by safetensors in one dtype keeps its tensors sorted by name and
    back to back, so the scoring engine maps the data section and copies it into a slot in one go (see
    mashup.selection.slots): one copy from the page cache instead of a read and a copy. The header is
    parsed here because safetensors does not expose data offsets; anything unexpected returns None and
    the caller falls back to ``load_weights``, whose errors say what is wrong.
    """
    import torch

    try:
        with open(path, "rb") as handle:
            span = block_span(handle, expected)
            if span is None:
                return None
            # copy-on-write: a writable view for torch.frombuffer; nothing is ever written through it
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        dtype, offset, nbytes = span
        return torch.frombuffer(mapped, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
        return None


def read_dir_block_into(model_dir: Path, expected: Sequence[tuple[str, tuple[int, ...]]],
                        allocate: Callable[[torch.dtype, int], torch.Tensor], *, allow_pickle: bool = False
                        ) -> torch.Tensor | None:
    """``read_dir_block``'s data read into a new flat tensor from ``allocate(dtype, numel)`` (pinned host memory,
    say) with plain reads, or None as ``read_dir_block``.

    For threads that read many files in a row into memory of their own: a read copies from the page cache
    straight into the tensor with the GIL released, where a mapping faults in each page and its unmapping
    interrupts the process's other threads to flush their page mappings. On an H200's host, first halving
    rounds over 1,000 SmolLM2 adapters took 1.35-1.43 s with these reads, against 1.55-1.76 s with mapped
    ones on another machine (docs/selection.md, "Overlapping loads with forwards")."""
    files = weight_files(model_dir, allow_pickle=allow_pickle)
    return read_file_block_into(files[0], expected, allocate) if len(files) == 1 else None


def read_file_block_into(path: Path, expected: Sequence[tuple[str, tuple[int, ...]]],
                         allocate: Callable[[torch.dtype, int], torch.Tensor]) -> torch.Tensor | None:
    """``read_dir_block_into`` of one safetensors file: None when it is missing or laid out otherwise."""
    import torch

    try:
        with open(path, "rb", buffering=0) as handle:
            span = block_span(handle, expected)
            if span is None:
                return None
            dtype, offset, nbytes = span
            block = allocate(dtype, nbytes // dtype.itemsize)
            view = memoryview(block.view(torch.uint8).numpy())
            handle.seek(offset)
            done = 0
            while done < nbytes:  # a regular file reads whole, but a read may stop early on a signal
                count = handle.readinto(view[done:])
                if not count:
                    return None
                done += count
        return block
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
        return None


def block_span(handle: BinaryIO, expected: Sequence[tuple[str, tuple[int, ...]]] | None
               ) -> tuple[torch.dtype, int, int] | None:
    """(dtype, data offset, data bytes) of an open safetensors file laid out as ``read_tensor_block`` needs."""
    (size,) = struct.unpack("<Q", handle.read(8))
    if size > _MAX_HEADER:
        return None
    dtype, nbytes = _block_layout(handle.read(size), _hashable(expected))
    if dtype is None or 8 + size + nbytes > os.fstat(handle.fileno()).st_size:
        return None
    return dtype, 8 + size, nbytes


def _hashable(expected: Sequence[tuple[str, tuple[int, ...]]] | None
              ) -> tuple[tuple[str, tuple[int, ...]], ...] | None:
    # a tuple is taken as given: rebuilding a SmolLM2 adapter's 420 pairs on every read cost more than the read
    if expected is None or isinstance(expected, tuple):
        return expected
    return tuple((name, tuple(shape)) for name, shape in expected)


@functools.lru_cache(maxsize=16)  # adapters of one layout share their header bytes: parse and check it once
def _block_layout(raw_header: bytes, expected: tuple[tuple[str, tuple[int, ...]], ...] | None
                  ) -> tuple[torch.dtype | None, int]:
    """The one dtype and byte size of a header whose tensors are ``expected`` (any, if None), back to back
    from offset 0."""
    import torch

    header = json.loads(raw_header)
    entries = sorted((tuple(v["data_offsets"]), name, v["dtype"], tuple(v["shape"]))
                     for name, v in header.items() if name != "__metadata__")
    dtypes = {dtype for _, _, dtype, _ in entries}
    if not entries or len(dtypes) != 1 or entries[0][2] not in _SAFETENSORS_DTYPES:
        return None, 0
    if expected is not None and tuple((name, shape) for _, name, _, shape in entries) != expected:
        return None, 0
    dtype = getattr(torch, _SAFETENSORS_DTYPES[entries[0][2]])
    itemsize = dtype.itemsize
    end = 0
    for (begin, stop), _, _, shape in entries:
        if begin != end or stop - begin != itemsize * math.prod(shape):
            return None, 0
        end = stop
    return dtype, end


def sorted_shapes(shapes: Mapping[str, Sequence[int]]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, shape) of each tensor, sorted by name: the order a one-dtype safetensors file stores them in."""
    return tuple(sorted((name, tuple(shape)) for name, shape in shapes.items()))
