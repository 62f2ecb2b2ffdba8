"""A checkpoint's tensor shapes from its weight files' headers, and whether they fit its base's: the base's
shapes read from its safetensors headers (``base_tensor_shapes``) for a full fine-tune, and for an adapter from the
model its config.json builds (``base_module_shapes``); each once per registration with ``BaseShapes``."""

from __future__ import annotations

import json
import re
import shlex
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from mashup.errors import CheckpointError
from mashup.io import TensorSpec, loaded_weight_files, tensor_specs
from mashup.library import shapes_cache
from mashup.library.lora_config import ADAPTER_CONFIG, ADAPTER_WEIGHTS, lora_base_difference, lora_module

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
    if model_dir is None:
        return None
    try:  # the files transformers loads, safetensors only
        return all_shapes(all_specs(loaded_weight_files(model_dir)))
    except CheckpointError:
        return None


def base_module_shapes(base: str) -> dict[str, list[int]] | None:
    """Names and shapes of the weights of the model the local base dir's config.json builds (on the meta device: no
    weights read), by the model's own names, which PEFT names the modules it adapts by; transformers 5 saves some
    architectures under other names (``weight_names.saved_names``). None when the base is not local or its config
    does not build. A build's result is replayed from ``shapes_cache`` for the same config and installed code."""
    from mashup.library.identity import local_base_dir  # identity imports records, which imports this module

    model_dir = local_base_dir(base)
    if model_dir is None:
        return None
    key = shapes_cache.shapes_key(model_dir)
    cached = shapes_cache.cached_shapes(key) if key is not None else None
    if cached is not None:
        return cached
    shapes = built_module_shapes(model_dir)
    # stored only if config.json did not change during the build, so the key names what was built
    if shapes is not None and key is not None and shapes_cache.shapes_key(model_dir) == key:
        shapes_cache.store_shapes(key, shapes, model_dir)
    return shapes


def built_module_shapes(model_dir: Path) -> dict[str, list[int]] | None:
    """``base_module_shapes`` of ``model_dir``, built (no cache); None when its config does not build."""
    from mashup.model_checks import model_on_meta

    try:
        return {name: list(tensor.shape) for name, tensor in model_on_meta(model_dir).state_dict().items()}
    except (CheckpointError, OSError):
        return None


class BaseShapes:
    """A base's shapes, each read once per base for as long as this object lives (one ``Library.add``): ``files``
    (``base_tensor_shapes``, which full fine-tunes must match) and ``modules`` (``base_module_shapes``, which
    adapters must fit). The checkpoints registered together share one read, and the next add reads again, as the
    base may have changed by then. Safe to call from several threads."""

    def __init__(self, files: ShapesOfBase = base_tensor_shapes, modules: ShapesOfBase = base_module_shapes) -> None:
        self._read = {"files": files, "modules": modules}
        self._shapes: dict[tuple[str, str], dict[str, list[int]] | None] = {}
        self._lock = threading.Lock()

    def files(self, base: str) -> dict[str, list[int]] | None:
        return self._get("files", base)

    def modules(self, base: str) -> dict[str, list[int]] | None:
        return self._get("modules", base)

    def _get(self, what: str, base: str) -> dict[str, list[int]] | None:
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
    # built, not read from the files: transformers 5 names some models' modules otherwise than their files, so a
    # config.json alone does not tell (a composite model, EXAONE, GPT-NeoX's embed_out, fused MoE experts)
    built = base_shapes.modules(base)
    shapes_of_base = built if built is not None else base_shapes.files(base)
    if not shapes_of_base:
        return
    unknown = unknown_module(shapes, built) if built is not None else None  # files may leave a tied head out
    if unknown:
        raise not_a_module(unknown, f"base '{base}'", where, inner_prefix(adapted_modules(shapes), _holders(built)))
    difference = lora_base_difference(shapes, shapes_of_base)
    if difference:
        raise CheckpointError(f"{difference}: not an adapter of base '{base}'", where,
                              "register it with the base it was trained on (base_model_name_or_path in "
                              f"{ADAPTER_CONFIG}, or --base), or re-save it")


def not_a_module(module: str, base: str, where: str, prefix: str | None = None) -> CheckpointError:
    """One wording for an adapter of modules the base's model does not have; ``prefix``: the one under which they
    all are its modules (``inner_prefix``)."""
    if prefix:
        return CheckpointError(f"adapter module {module} is not a module of the model {base} builds, but "
                               f"{prefix}{module} is: the adapter was saved from the model inside it (AutoModel, no "
                               "LM head), so PEFT would load none of its tensors", where, _reprefix_fix(prefix, where))
    if re.search(r"\.experts\.\d+\.", module):  # PEFT re-saves those as target_parameters, which we refuse
        fix = ("per-expert LoRA of a model whose experts transformers 5 fuses is not supported: use adapters of its "
               "attention or dense layers")
    else:
        fix = ("register it with the base it was trained on; one saved under another transformers version's module "
               "names loads in PEFT, which renames them: re-save it so (PeftModel.from_pretrained(model, "
               "DIR).save_pretrained(NEW_DIR)) and register that")
    return CheckpointError(f"adapter module {module} is not a module of the model {base} builds", where, fix)


def _reprefix_fix(prefix: str, where: str) -> str:
    """How to rename an adapter's tensors under ``prefix``: a command, where ``where`` is its dir with its weights."""
    names = f"base_model.model.NAME to base_model.model.{prefix}NAME"
    source = Path(where).resolve()
    if not (source / ADAPTER_WEIGHTS).is_file():
        return f"rename its tensors {names} in {ADAPTER_WEIGHTS} and register that"
    copy = source.with_name(f"{source.name}-{prefix.strip('.').replace('.', '-')}")
    # copytree refuses an existing copy, so running the command twice cannot rename a copy's tensors twice
    weights = json.dumps(f"/{ADAPTER_WEIGHTS}")
    code = (f"import shutil; from safetensors.torch import load_file, save_file; "
            f"f = shutil.copytree({json.dumps(str(source))}, {json.dumps(str(copy))}) + {weights}; "
            f'save_file({{k.replace("base_model.model.", "base_model.model.{prefix}", 1): v '
            'for k, v in load_file(f).items()}, f, {"format": "pt"})')
    return f"rename its tensors {names} into a copy, {copy}, and register that: python -c {shlex.quote(code)}"


def inner_prefix(modules: Collection[str], holders: Collection[str]) -> str | None:
    """The shortest prefix (``model.`` for a causal LM) under which every one of an adapter's ``modules`` is one of
    a model's ``holders`` (its modules' names); None where there is none."""
    first = next(iter(sorted(modules)), None)
    if first is None:
        return None
    found = sorted({h[:-len(first)] for h in holders if h.endswith(f".{first}")}, key=lambda p: (len(p), p))
    return next((p for p in found if all(p + m in holders for m in modules)), None)


def require_model_modules(modules: Iterable[str], model: Any, where: str) -> None:
    """Refuse adapted ``modules`` the built ``model`` (an ``nn.Module``) does not have, naming the adapter ``where``
    they come from (``not_a_module``)."""
    holders = {name for name, _ in model.named_modules()}
    missing = sorted(set(modules) - holders)
    if missing:
        raise not_a_module(missing[0], "the base", where, inner_prefix(set(modules), holders))


def adapted_modules(names: Iterable[str]) -> set[str]:
    """The modules an adapter's tensors (``names``) hold LoRA factors of."""
    return {lora_module(name) for name in names if ".lora_A." in name}


def unknown_module(shapes: dict[str, list[int]], base_shapes: dict[str, list[int]]) -> str | None:
    """The first module an adapter's factors (``shapes``) adapt that holds none of the base's weights."""
    holders = _holders(base_shapes)
    return next((module for module in sorted(adapted_modules(shapes)) if module not in holders), None)


def _holders(base_shapes: dict[str, list[int]]) -> set[str]:
    """The modules holding a model's weights (``base_shapes``: its weights' names), parents too."""
    return {name[:i] for name in base_shapes for i, char in enumerate(name) if char == "."}
