"""File-system helpers: atomic output directories (see mashup.atomic_dir), digests and safe weight loading."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from safetensors import safe_open

from mashup.atomic_dir import atomic_output_dir
from mashup.errors import CheckpointError

# torch is imported where tensors are made: the library's catalog imports this module, and listing the
# library reads its catalog only (torch takes about 2 s to import here; registering imports it for the NaN
# check)
if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
__all__ = ["atomic_output_dir", "check_finite", "load_weight_dir", "load_weights", "non_float_tensors",
           "read_dir_block", "read_dir_block_into", "read_tensor_block", "require_finite_tensors", "sha256_files",
           "sorted_shapes", "stat_files", "tensor_shapes", "weight_files", "write_json", "write_text_atomic"]

_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}  # torch names
_MAX_HEADER = 100 << 20
_CHECK_CHUNK = 8 << 20  # bytes hashed and checked at a time when registering


def write_json(path: Path, data: Any) -> None:
    """``data`` as JSON at ``path``, atomically (``write_text_atomic``): a summary written last marks its dir
    complete."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` at ``path``, written to a temp sibling and renamed: a reader (or a kill) never meets half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_files(paths: list[Path], *, check_values: bool = False) -> str:
    """One digest over the given files, in the given order. With ``check_values`` every weight is checked
    finite too (``check_finite``'s error), from the same reads where a file is one block of one dtype:
    registering an adapter read it twice, once to hash it and once to check it."""
    digest = hashlib.sha256()
    for path in paths:
        checked = _hash_checking_block(path, digest) if check_values else None
        if checked is None:  # not checked here (or not one block): hashed alone
            _hash_file(path, digest)
        if check_values and not checked:
            check_finite([path])  # names the tensor; a one-block file found not finite always raises here
            if checked is False:
                raise CheckpointError("weights changed while being checked", str(path), "register it again")
    return digest.hexdigest()


def _hash_file(path: Path, digest: Any) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def _hash_checking_block(path: Path, digest: Any) -> bool | None:
    """Hash a one-block safetensors file into ``digest`` and say whether all its values are finite; None
    (nothing hashed) for any other file."""
    import torch

    if path.suffix != ".safetensors":
        return None
    with open(path, "rb") as handle:
        try:
            span = _block_span(handle, None)
        except (ValueError, KeyError, TypeError, AttributeError, struct.error):
            span = None
        if span is None:
            return None
        dtype, offset, nbytes = span
        handle.seek(0)
        digest.update(handle.read(offset))
        finite = True
        chunk = memoryview(bytearray(_CHECK_CHUNK))  # a whole number of values of any dtype
        while nbytes:
            view = chunk[:min(len(chunk), nbytes)]
            if handle.readinto(view) != len(view):
                return False  # shorter than its header said when it was opened: changed since
            digest.update(view)
            finite = finite and bool(torch.isfinite(torch.frombuffer(view, dtype=dtype)).all())
            nbytes -= len(view)
        for block in iter(lambda: handle.read(1 << 20), b""):  # anything after the data section
            digest.update(block)
    return finite


def stat_files(paths: list[Path]) -> list[dict[str, Any]]:
    """Name, size, mtime, ctime and inode of each file: what tells, short of hashing, that a file changed.

    ctime cannot be set back by tools that restore an mtime (``touch -d``, ``cp -p``), and the inode
    changes when a file is replaced by another one.
    """
    stats = []
    for path in paths:
        st = path.stat()
        stats.append({"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                      "ino": st.st_ino})
    return stats


def weight_files(model_dir: Path, *, allow_pickle: bool = False) -> list[Path]:
    """The weight files of a model or adapter dir: safetensors, or pickles only when allowed."""
    found = sorted(model_dir.glob("*.safetensors"))
    if found:
        return found
    pickles = sorted(model_dir.glob("*.bin"))
    if pickles and not allow_pickle:
        raise CheckpointError(
            "only pickle (.bin) weights found; refusing to unpickle",
            str(model_dir),
            "convert them to safetensors or pass --allow-pickle",
        )
    if pickles:
        return pickles
    raise CheckpointError("no weight files (*.safetensors)", str(model_dir), "point at a model or adapter dir")


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load one weight file; pickles only through ``torch.load(weights_only=True)``."""
    import torch
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated files raise library-specific errors
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"cannot read weights ({type(exc).__name__}: {exc})", str(path),
                           "the file is corrupt or truncated; re-save or re-download it")


def load_weight_dir(model_dir: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of a model or adapter dir's weight files, in one dict."""
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(model_dir, allow_pickle=allow_pickle):
        tensors.update(load_weights(path))
    return tensors


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
            span = _block_span(handle, expected)
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
            span = _block_span(handle, expected)
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


def _block_span(handle: BinaryIO, expected: Sequence[tuple[str, tuple[int, ...]]] | None
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


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Names and shapes of the tensors in a weight file, without loading the data."""
    if path.suffix != ".safetensors":
        return {name: list(t.shape) for name, t in load_weights(path).items()}
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as exc:
        raise _unreadable(path, exc) from None


def non_float_tensors(path: Path) -> list[str]:
    """Names of the tensors in a weight file that do not hold floating-point values (safetensors: header only)."""
    if path.suffix != ".safetensors":
        return [name for name, t in load_weights(path).items() if not t.is_floating_point()]
    try:
        with safe_open(str(path), framework="pt") as handle:
            dtypes = {name: handle.get_slice(name).get_dtype() for name in handle.keys()}
    except Exception as exc:
        raise _unreadable(path, exc) from None
    return [name for name, dtype in dtypes.items() if not dtype.startswith(("F", "BF"))]  # F16, BF16, F8_E4M3...


def check_finite(files: list[Path]) -> None:
    """Refuse weights holding NaN or inf, one tensor (or chunk) in memory at a time."""
    for path in files:
        if _finite_block(path):
            continue  # else: a NaN or inf to name, or a file not laid out as one block
        if path.suffix != ".safetensors":
            tensors = load_weights(path)
            items = tensors.items()
        else:
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as exc:
                raise _unreadable(path, exc) from None
            items = ((name, handle.get_tensor(name)) for name in handle.keys())
        require_finite_tensors(items, path)


def require_finite_tensors(items: Iterable[tuple[str, torch.Tensor]], where: str | Path) -> None:
    """Refuse the first tensor holding NaN or inf, by name, as checked one at a time from ``items``."""
    import torch

    for name, tensor in items:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"tensor {name} holds NaN or inf", str(where),
                                  "the checkpoint is broken; retrain or re-export it")


def _finite_block(path: Path) -> bool:
    """True when ``path`` maps as one block (``read_tensor_block``) and every value is finite: one check per
    chunk, where hundreds of small tensors cost ~0.1 ms each (a SmolLM2 adapter: 43 ms, against 7 ms)."""
    import torch

    block = read_tensor_block(path) if path.suffix == ".safetensors" else None
    if block is None:
        return False
    return all(bool(torch.isfinite(chunk).all()) for chunk in block.split(1 << 24))
