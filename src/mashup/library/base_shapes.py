"""A checkpoint's tensor shapes from its weight files' headers, and whether they fit its base's: the base's
shapes read from its safetensors headers (``base_tensor_shapes``), or, for an adapter where the files' names may
not be the modules', from the model its config.json builds (``base_module_shapes``); each once per registration
with ``BaseShapes``."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mashup.errors import CheckpointError
from mashup.io import TensorSpec, tensor_specs
from mashup.library.lora_config import ADAPTER_CONFIG, lora_base_difference, lora_module

ShapesOfBase = Callable[[str], dict[str, list[int]] | None]  # a base -> its tensors' shapes


def all_specs(files: list[Path]) -> dict[Path, dict[str, TensorSpec]]:
    """Each weight file's tensors, from one parse of its header."""
    return {file: tensor_specs(file) for file in files}


def all_shapes(specs: Mapping[Path, Mapping[str, TensorSpec]]) -> dict[str, list[int]]:
    """The shape of every tensor of a checkpoint (``specs``: each weight file's tensors)."""
    return {name: spec.shape for tensors in specs.values() for name, spec in tensors.items()}


def _heads(names: set[str]) -> set[str]:
    """The output heads among ``names``: a tied one is saved by some tools and left out by others, and whether the
    base ties it is known once the model is built (``models.load_full_weights_into`` refuses an untied one that is
    missing). Composite models save it under their text model's prefix (Gemma-3's multimodal checkpoints:
    ``language_model.lm_head.weight``)."""
    return {name for name in names if name == "lm_head.weight" or name.endswith(".lm_head.weight")}


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


def base_module_shapes(base: str) -> dict[str, list[int]] | None:
    """Names and shapes of the weights of the model the local base dir's config.json builds (on the meta device: no
    weights read), by the model's own names, which PEFT names the modules it adapts by; transformers 5 saves some
    architectures under other names (``model_checks.saved_names``). None when the base is not local or its config
    does not build."""
    from mashup.library.identity import local_base_dir  # identity imports records, which imports this module
    from mashup.model_checks import model_on_meta

    model_dir = local_base_dir(base)
    if model_dir is None:
        return None
    try:
        return {name: list(tensor.shape) for name, tensor in model_on_meta(model_dir).state_dict().items()}
    except (CheckpointError, OSError):
        return None


def may_rename(base: str) -> bool:
    """Whether transformers may build the model of the local base dir ``base`` names under other names than its files
    hold, from its config.json alone: a composite model (a ``text_config``) or one with experts, which it may fuse.
    Building the model to see costs an import of its transformers classes (about 2 s) a plain decoder's adapters need
    not pay: their modules are the files' names."""
    from mashup.library.identity import local_base_dir  # identity imports records, which imports this module

    model_dir = local_base_dir(base)
    try:
        config = json.loads((model_dir / "config.json").read_text()) if model_dir else None
    except (OSError, ValueError):
        return True
    if not isinstance(config, dict):
        return True
    return "text_config" in config or any("expert" in key for key in config)


class BaseShapes:
    """A base's shapes, each read once per base for as long as this object lives (one ``Library.add``): ``files``
    (``base_tensor_shapes``, which full fine-tunes must match) and ``modules`` (``base_module_shapes``, which
    adapters must fit), and whether they may differ (``may_rename``). The checkpoints registered together share one
    read, and the next add reads again, as the base may have changed by then. Safe to call from several threads."""

    def __init__(self, files: ShapesOfBase = base_tensor_shapes, modules: ShapesOfBase = base_module_shapes,
                 renames: Callable[[str], bool] = may_rename) -> None:
        self._read: dict[str, Callable[[str], Any]] = {"files": files, "modules": modules, "renames": renames}
        self._shapes: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def may_rename(self, base: str) -> bool:
        return self._get("renames", base)

    def files(self, base: str) -> dict[str, list[int]] | None:
        return self._get("files", base)

    def modules(self, base: str) -> dict[str, list[int]] | None:
        return self._get("modules", base)

    def _get(self, what: str, base: str) -> Any:
        with self._lock:  # held while reading: the other threads wait for this read rather than each reading
            if (what, base) not in self._shapes:
                self._shapes[what, base] = self._read[what](base)
            return self._shapes[what, base]


def full_shapes_difference(shapes: dict[str, list[int]], base_shapes: dict[str, list[int]]) -> str | None:
    """How a full checkpoint's tensors (``shapes``) do not fit its base's: a missing, unexpected or reshaped
    tensor; None when they fit."""
    missing = sorted(set(base_shapes) - set(shapes) - _heads(set(base_shapes)))
    if missing:
        return f"tensor {missing[0]} of the base is missing ({len(missing)} missing)"
    unexpected = sorted(set(shapes) - set(base_shapes) - _heads(set(shapes)))
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


def check_lora_fits_base(shapes: dict[str, list[int]], base: str, base_shapes: BaseShapes, where: str) -> None:
    """Refuse factors of modules the model the base's config builds does not have, or made for other module sizes
    (when the base is on disk; where its config does not build, the sizes of its files' weights): PEFT fails on them
    at load time with a traceback, after every score that used the record."""
    if not base:
        return
    files = base_shapes.files(base)
    # the model is built only where the files' names may not tell (see may_rename), or do not hold every module
    check_built = files is None or base_shapes.may_rename(base) or unknown_module(shapes, files) is not None
    built = base_shapes.modules(base) if check_built else None
    shapes_of_base = built if built is not None else files
    if not shapes_of_base:
        return
    unknown = unknown_module(shapes, built) if built is not None else None  # files may leave a tied head out
    if unknown:
        raise not_a_module(unknown, f"base '{base}'", where)
    difference = lora_base_difference(shapes, shapes_of_base)
    if difference:
        raise CheckpointError(f"{difference}: not an adapter of base '{base}'", where,
                              "register it with the base it was trained on (base_model_name_or_path in "
                              f"{ADAPTER_CONFIG}, or --base), or re-save it")


def not_a_module(module: str, base: str, where: str) -> CheckpointError:
    """One wording for an adapter of modules the base's model does not have."""
    if re.search(r"\.experts\.\d+\.", module):  # PEFT re-saves those as target_parameters, which we refuse
        fix = ("per-expert LoRA of a model whose experts transformers 5 fuses is not supported: use adapters of its "
               "attention or dense layers")
    else:
        fix = ("register it with the base it was trained on; one saved under another transformers version's module "
               "names loads in PEFT, which renames them: re-save it so (PeftModel.from_pretrained(model, "
               "DIR).save_pretrained(NEW_DIR)) and register that")
    return CheckpointError(f"adapter module {module} is not a module of the model {base} builds", where, fix)


def adapted_modules(names: Iterable[str]) -> set[str]:
    """The modules an adapter's tensors (``names``) hold LoRA factors of."""
    return {lora_module(name) for name in names if ".lora_A." in name}


def unknown_module(shapes: dict[str, list[int]], base_shapes: dict[str, list[int]]) -> str | None:
    """The first module an adapter's factors (``shapes``) adapt that holds none of the base's weights."""
    holders = {name[:i] for name in base_shapes for i, char in enumerate(name) if char == "."}
    return next((module for module in sorted(adapted_modules(shapes)) if module not in holders), None)
