"""Content digests of weight files, optionally checking the values finite from the same reads."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

from mashup.errors import CheckpointError
from mashup.io.blocks import block_span
from mashup.io.headers import check_finite

_CHECK_CHUNK = 8 << 20  # bytes hashed and checked at a time when registering


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
            span = block_span(handle, None)
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
