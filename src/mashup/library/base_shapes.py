"""A checkpoint's tensor shapes from its weight files' headers, and whether they fit its base's: the base's
shapes read from its safetensors headers (``base_tensor_shapes``, once per registration with ``BaseShapes``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from mashup.errors import CheckpointError
from mashup.io import TensorSpec, tensor_specs
from mashup.library.lora_config import ADAPTER_CONFIG, lora_base_difference

ShapesOfBase = Callable[[str], dict[str, list[int]] | None]  # a base -> its tensors' shapes


def all_specs(files: list[Path]) -> dict[Path, dict[str, TensorSpec]]:
    """Each weight file's tensors, from one parse of its header."""
    return {file: tensor_specs(file) for file in files}


def all_shapes(specs: Mapping[Path, Mapping[str, TensorSpec]]) -> dict[str, list[int]]:
    """The shape of every tensor of a checkpoint (``specs``: each weight file's tensors)."""
    return {name: spec.shape for tensors in specs.values() for name, spec in tensors.items()}


# a tied output head is saved by some tools and left out by others; whether the base ties it is known once the
# model is built, where models.load_full_weights_into refuses an untied one that is missing
_TIED_HEAD = "lm_head.weight"


def base_tensor_shapes(base: str) -> dict[str, list[int]] | None:
    """Names and shapes of the tensors of the local model dir ``base`` names, from its safetensors headers (no
    weights read); None when it is not local or not readable so."""
    from mashup.library.identity import local_base_dir  # identity imports records, which imports this module

    model_dir = local_base_dir(base)
    files = sorted(model_dir.glob("*.safetensors")) if model_dir else []
    try:
        return all_shapes(all_specs(files)) if files else None
    except CheckpointError:
        return None


class BaseShapes:
    """``base_tensor_shapes``, read once per base for as long as this object lives (one ``Library.add``): the
    full fine-tunes registered together share one read of the base's headers, and the next add reads them again,
    as they may have changed by then. Safe to call from several threads."""

    def __init__(self) -> None:
        self._shapes: dict[str, dict[str, list[int]] | None] = {}
        self._lock = threading.Lock()

    def __call__(self, base: str) -> dict[str, list[int]] | None:
        with self._lock:  # held while reading: the other threads wait for this read rather than each reading
            if base not in self._shapes:
                self._shapes[base] = base_tensor_shapes(base)
            return self._shapes[base]


def full_shapes_difference(shapes: dict[str, list[int]], base_shapes: dict[str, list[int]]) -> str | None:
    """How a full checkpoint's tensors (``shapes``) do not fit its base's: a missing, unexpected or reshaped
    tensor; None when they fit."""
    missing = sorted(set(base_shapes) - set(shapes) - {_TIED_HEAD})
    if missing:
        return f"tensor {missing[0]} of the base is missing ({len(missing)} missing)"
    unexpected = sorted(set(shapes) - set(base_shapes) - {_TIED_HEAD})
    if unexpected:
        return f"tensor {unexpected[0]} is not in the base ({len(unexpected)} such)"
    for name, shape in sorted(shapes.items()):
        if name in base_shapes and shape != base_shapes[name]:
            return f"tensor {name} has shape {shape} where the base has {base_shapes[name]}"
    return None


def check_fits_base(shapes: dict[str, list[int]], base: str, base_shapes: dict[str, list[int]] | None,
                    where: str) -> None:
    difference = full_shapes_difference(shapes, base_shapes) if base_shapes is not None else None
    if difference:
        raise CheckpointError(f"{difference}: not a fine-tune of base '{base}'", where,
                              "register it with the --base it was fine-tuned from, or re-save it")


def check_lora_fits_base(shapes: dict[str, list[int]], base: str, base_shapes: ShapesOfBase, where: str) -> None:
    """Refuse factors made for other module sizes than the base's (when it is on disk): PEFT fails on them at load
    time with a size-mismatch traceback, after every score that used the record."""
    shapes_of_base = base_shapes(base) if base else None
    difference = lora_base_difference(shapes, shapes_of_base) if shapes_of_base else None
    if difference:
        raise CheckpointError(f"{difference}: not an adapter of base '{base}'", where,
                              "register it with the base it was trained on (base_model_name_or_path in "
                              f"{ADAPTER_CONFIG}, or --base), or re-save it")
