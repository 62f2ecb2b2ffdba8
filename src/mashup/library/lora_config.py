"""What a LoRA adapter_config.json says, and whether the adapter's tensors are the ones it makes PEFT load.

Which modules a config adapts follows PEFT's rule (``check_target_module_exists`` in peft.tuners.tuners_utils,
PEFT 0.21): exclude_modules first, then target_modules (a regex the whole module name must match, or names it
must equal or end with), then, for names matched by their ending, layers_to_transform, with the layer index
found by layers_pattern. PEFT drops a factor of any other module without a word on load (where
models._require_matching_keys catches it); registration refuses it first, before any score depends on it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mashup.errors import CheckpointError
from mashup.io import TensorSpec

ADAPTER_CONFIG = "adapter_config.json"
LORA_SETTINGS = ("lora_r", "lora_alpha", "target_modules", "use_rslora", "use_dora")
# the fields that narrow which modules target_modules picks: registration judges the factors against them, so an
# edit of them later makes the record stale, and a merge cannot unite inputs that differ in them
NARROWING_FIELDS = ("exclude_modules", "layers_to_transform", "layers_pattern")
_NAMES = "a list of module names or a regex string"
_ALL_LINEAR = "all-linear"  # PEFT's shorthand, compared case-insensitively; it picks linear layers once built


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_targets(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, list)
                                                       and all(isinstance(t, str) for t in value))


def _is_flag(value: Any) -> bool:
    return value is None or isinstance(value, bool)


def _is_layers(value: Any) -> bool:
    def is_index(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return value is None or is_index(value) or (isinstance(value, list) and all(map(is_index, value)))


def _field(config: dict[str, Any], name: str, default: Any, valid: Callable[[Any], bool], expected: str,
           where: str) -> Any:
    """``config[name]`` (``default`` if absent), refused unless of the type PEFT expects."""
    value = config.get(name, default)
    if not valid(value):
        raise CheckpointError(f"{ADAPTER_CONFIG} field '{name}' is {_shown(value)}, expected {expected}", where,
                              f"fix '{name}' in the file or re-save the adapter")
    return value


def _shown(value: Any) -> str:
    shown = json.dumps(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _names_field(config: dict[str, Any], name: str, where: str) -> str | list[str] | None:
    """A field naming modules as target_modules does; a string must compile, as PEFT matches it with
    ``re.fullmatch`` on load (where it would fail with a bare ``re.error``)."""
    value = _field(config, name, None, _is_targets, _NAMES, where)
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as exc:
            raise CheckpointError(f"{ADAPTER_CONFIG} field '{name}' is {_shown(value)}, not a valid regex ({exc})",
                                  where, f"fix the regex in '{name}' or list the module names instead") from None
    return value


def lora_settings(config: dict[str, Any], where: str = ADAPTER_CONFIG) -> dict[str, Any]:
    """What an adapter_config.json (at ``where``) says about how the factors apply (the record's fields of the
    same names): rank, alpha, rsLoRA, DoRA and the target modules. The weights' digest does not cover them."""
    r = _field(config, "r", 8, _is_count, "a positive integer", where)
    alpha = _field(config, "lora_alpha", r, _is_number, "a number", where)
    targets = _names_field(config, "target_modules", where) or []
    return {"lora_r": r, "lora_alpha": float(alpha),
            "target_modules": [targets] if isinstance(targets, str) else sorted(targets),
            "use_rslora": bool(_field(config, "use_rslora", False, _is_flag, "true or false", where)),
            "use_dora": bool(_field(config, "use_dora", False, _is_flag, "true or false", where))}


def lora_narrowing(config: dict[str, Any]) -> dict[str, Any]:
    """The ``NARROWING_FIELDS`` as an adapter_config.json gives them (None where absent), kept by a record to tell
    when they change."""
    return {name: config.get(name) for name in NARROWING_FIELDS}


def is_factor(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def check_lora_shapes(shapes: dict[str, list[int]], r: int, where: str) -> None:
    a_names = [n for n in shapes if ".lora_A." in n]
    if not a_names:
        raise CheckpointError("adapter weights hold no lora_A/lora_B tensors", where, "is this a LoRA adapter?")
    for name in a_names:
        b_name = name.replace(".lora_A.", ".lora_B.")
        if b_name not in shapes:
            raise CheckpointError(f"tensor {b_name} is missing", where, "re-save the adapter")
        if shapes[name][0] != r or shapes[b_name][-1] != r:
            raise CheckpointError(f"tensor {name} has rank {shapes[name][0]} but {ADAPTER_CONFIG} says r={r}", where,
                                  "re-save the adapter")


def check_lora_dtypes(specs: Mapping[Path, Mapping[str, TensorSpec]]) -> None:
    """Refuse factors that are not floating point, naming the file (``specs``: each file's tensors)."""
    for path, tensors in specs.items():
        bad = [name for name, spec in tensors.items() if not spec.floating and is_factor(name)]
        if bad:
            raise CheckpointError(f"tensor {bad[0]} is not floating point ({len(bad)} such LoRA tensor(s))",
                                  str(path), "re-save the adapter in float32, float16 or bfloat16")


@dataclass(frozen=True)
class _Targets:
    """The modules PEFT adapts by name (a regex, or names to equal or end with), as the errors show them."""

    value: str | list[str]
    shown: str


@dataclass(frozen=True)
class _Narrowing:
    """The fields that narrow what target_modules matches: None where a field does not apply."""

    excluded: str | list[str] | None
    layers: list[int] | None
    patterns: list[str] | None  # None: PEFT's default, the first numbered part of the name


def check_lora_targets(shapes: dict[str, list[int]], config: dict[str, Any], base: str | None, where: str) -> None:
    """Refuse factors PEFT would drop on load (their module not targeted, excluded, or in a layer left out) and
    configs PEFT refuses to load for their targets; ``base`` is needed only where target_modules is null."""
    narrowing = _narrowing(config, where)  # refused as PEFT's LoraConfig refuses it, whatever the targets
    if config.get("target_parameters"):
        return  # LoRA on parameters: module names alone do not say what is adapted
    targets = _targets(config, base, where)
    for name in filter(is_factor, shapes):
        dropped = _dropped(_lora_module(name), targets, narrowing)
        if dropped:
            what, field = dropped
            raise CheckpointError(f"tensor {name} {what} (PEFT would drop it on load)", where,
                                  f"fix {field} or re-save the adapter")


def _narrowing(config: dict[str, Any], where: str) -> _Narrowing:
    """exclude_modules, layers_to_transform and layers_pattern, refused where PEFT's LoraConfig refuses them."""
    where_file = str(Path(where) / ADAPTER_CONFIG)
    excluded = _names_field(config, "exclude_modules", where_file)
    layers = _field(config, "layers_to_transform", None, _is_layers, "a layer index or a list of them", where_file)
    patterns = _field(config, "layers_pattern", None, _is_targets, "a name or a list of names", where_file)
    if patterns and layers is None:
        raise CheckpointError(f"layers_pattern {json.dumps(patterns)} in {ADAPTER_CONFIG} needs layers_to_transform "
                              "(PEFT refuses to load it)", where, "add layers_to_transform or drop layers_pattern")
    given = [name for name, value in (("layers_to_transform", layers), ("layers_pattern", patterns))
             if value is not None]
    if isinstance(config.get("target_modules"), str) and given:
        raise CheckpointError(f"{given[0]} in {ADAPTER_CONFIG} cannot narrow a target_modules string (PEFT refuses "
                              "to load it)", where, f"drop {given[0]} or list the target modules")
    return _Narrowing(excluded or None, [layers] if isinstance(layers, int) else layers or None,
                      [patterns] if isinstance(patterns, str) else patterns or None)


def _targets(config: dict[str, Any], base: str | None, where: str) -> _Targets | None:
    """What target_modules makes PEFT adapt; None where that is known only once the model is built."""
    targets = config.get("target_modules")
    if targets is None:
        return _default_targets(base, where)
    if isinstance(targets, str) and targets.lower() == _ALL_LINEAR:
        return None
    if not targets:
        raise CheckpointError(f"target_modules {json.dumps(targets)} in {ADAPTER_CONFIG} names no module (PEFT "
                              "refuses to load it)", where, "list the adapted modules in target_modules")
    return _Targets(targets, f"target_modules {json.dumps(targets)} in {ADAPTER_CONFIG}")


def _default_targets(base: str | None, where: str) -> _Targets | None:
    """PEFT's targets for a null target_modules: its default for the base's model_type; None where the base is not
    at hand (the check is then left to loading)."""
    from mashup.library.identity import local_base_dir  # identity imports records, which imports this module

    model_dir = local_base_dir(base) if base else None
    try:
        model_type = json.loads((model_dir / "config.json").read_text()).get("model_type") if model_dir else None
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(model_type, str):
        return None
    # imports peft (seconds): only for the rare config that leaves its targets to PEFT
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    targets = defaults.get(model_type)
    if targets is None:
        raise CheckpointError(f"target_modules is null in {ADAPTER_CONFIG} and PEFT has no default targets for "
                              f"model_type '{model_type}' of base '{base}'", where,
                              "list the adapted modules in target_modules")
    targets = targets if isinstance(targets, str) else sorted(targets)
    return _Targets(targets, f"PEFT's default target_modules {json.dumps(targets)} for model_type '{model_type}' "
                             f"(target_modules is null in {ADAPTER_CONFIG})")


def _lora_module(name: str) -> str:
    """The module a saved lora_A/lora_B tensor adapts, named as PEFT matches target_modules against it."""
    module = re.split(r"\.lora_[AB]\.", name, maxsplit=1)[0]
    return module.removeprefix("base_model.model.")


def _matches(module: str, names: str | list[str]) -> bool:
    """PEFT's rule: a string is a regex the whole name must match (``_names_field`` checked that it compiles), a
    list entry matches the name itself or its last dotted parts."""
    if isinstance(names, str):
        return re.fullmatch(names, module) is not None
    return any(module == n or module.endswith(f".{n}") for n in names)


def _dropped(module: str, targets: _Targets | None, narrowing: _Narrowing) -> tuple[str, str] | None:
    """Why PEFT would not adapt ``module``, and the field that says so; None if it would (or cannot be told)."""
    adapts = f"adapts module '{module}', which"
    if narrowing.excluded and _matches(module, narrowing.excluded):
        excluded = json.dumps(narrowing.excluded)
        return f"{adapts} exclude_modules {excluded} in {ADAPTER_CONFIG} excludes", "exclude_modules"
    if targets is None:
        return None
    if not _matches(module, targets.value):
        return f"{adapts} {targets.shown} does not cover", "target_modules"
    if narrowing.layers is None or isinstance(targets.value, str) or module in targets.value:
        return None  # PEFT checks the layer only of a module matched by the ending of its name
    try:
        index = _layer_index(module, narrowing.patterns)
    except re.error:
        return None
    layers = f"layers_to_transform {json.dumps(narrowing.layers)} in {ADAPTER_CONFIG}"
    if index is None and narrowing.patterns:
        return (f"adapts module '{module}', in which layers_pattern {json.dumps(narrowing.patterns)} in "
                f"{ADAPTER_CONFIG} finds no layer index", "layers_pattern")
    if index is None:
        return f"{adapts} has no layer index for {layers}", "layers_to_transform"
    if index not in narrowing.layers:
        return f"is in layer {index}, which {layers} leaves out", "layers_to_transform"
    return None


def _layer_index(module: str, patterns: list[str] | None) -> int | None:
    """The layer index PEFT reads from a module's name: its first numbered part, or the number after a
    layers_pattern name."""
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(\d+)\.", module)
    else:
        match = next(filter(None, (re.match(rf"(?:^|.*?\.){p}\.(\d+)\.", module) for p in patterns)), None)
    return int(match.group(1)) if match else None
