"""File-system helpers: atomic output directories and safe weight loading."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mashup.errors import CheckpointError, MashupError

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_output_dir(out_dir: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling dir that is renamed to ``out_dir`` only on success.

    A failure leaves nothing at ``out_dir``, so no half-written output looks complete.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise MashupError(
            "output directory already exists and is not empty",
            str(out_dir),
            "choose another --out or remove it",
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def sha256_files(paths: list[Path]) -> str:
    """One digest over the given files, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


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
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated files raise library-specific errors
        raise CheckpointError(f"cannot read weights ({type(exc).__name__}: {exc})", str(path),
                              "the file is corrupt or truncated; re-save it") from None


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Names and shapes of the tensors in a weight file, without loading the data."""
    if path.suffix != ".safetensors":
        return {name: list(t.shape) for name, t in load_weights(path).items()}
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as exc:
        raise CheckpointError(f"cannot read weights ({type(exc).__name__}: {exc})", str(path),
                              "the file is corrupt or truncated; re-save it") from None


def check_finite(files: list[Path]) -> None:
    """Refuse weights holding NaN or inf, one tensor in memory at a time."""
    for path in files:
        if path.suffix != ".safetensors":
            tensors = load_weights(path)
            items = tensors.items()
        else:
            handle = safe_open(str(path), framework="pt")
            items = ((name, handle.get_tensor(name)) for name in handle.keys())
        for name, tensor in items:
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise CheckpointError(f"tensor {name} holds NaN or inf", str(path),
                                      "the checkpoint is broken; retrain or re-export it")
