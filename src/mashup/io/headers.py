"""What a weight file's header says (names, shapes, dtypes), and checks that its values are finite."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from safetensors import safe_open

from mashup.errors import CheckpointError
from mashup.io.blocks import read_tensor_block
from mashup.io.files import load_weights, unreadable_error

if TYPE_CHECKING:
    import torch


class TensorSpec(NamedTuple):
    """What a weight file's header says about one tensor."""

    shape: list[int]
    floating: bool  # holds floating-point values (F16, BF16, F32, F8_E4M3...)


def tensor_specs(path: Path) -> dict[str, TensorSpec]:
    """Shape and kind of each tensor in a weight file, from one parse of its header (safetensors; pickles are
    loaded)."""
    if path.suffix != ".safetensors":
        return {name: TensorSpec(list(t.shape), t.is_floating_point()) for name, t in load_weights(path).items()}
    try:
        with safe_open(str(path), framework="pt") as handle:
            slices = {name: handle.get_slice(name) for name in handle.keys()}
            return {name: TensorSpec(list(s.get_shape()), s.get_dtype().startswith(("F", "BF")))
                    for name, s in slices.items()}
    except Exception as exc:
        raise unreadable_error(path, exc) from None


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Names and shapes of the tensors in a weight file, without loading the data."""
    return {name: spec.shape for name, spec in tensor_specs(path).items()}


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
                raise unreadable_error(path, exc) from None
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
