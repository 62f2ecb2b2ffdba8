"""Which modules a LoRA adapter_config.json makes PEFT adapt, and whether the adapter's factors are all among them.

The rule is PEFT's (``check_target_module_exists`` in peft.tuners.tuners_utils, PEFT 0.21): exclude_modules first,
then target_modules (a regex the whole module name must match, or names it must equal or end with), then, for names
matched by their ending, layers_to_transform, with the layer index found by layers_pattern. PEFT drops a factor of
any other module without a word on load (where ``model_checks.require_matching_keys`` catches it); registration
refuses it first, before any score depends on it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mashup.errors import CheckpointError
from mashup.library.lora_config import (ADAPTER_CONFIG, ALL_LINEAR, is_factor, is_layer_choice, is_module_names,
                                        lora_module, names_field, read_field, require_regexes)


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
        dropped = _dropped(lora_module(name), targets, narrowing)
        if dropped:
            what, field = dropped
            raise CheckpointError(f"tensor {name} {what} (PEFT would drop it on load)", where,
                                  f"fix {field} or re-save the adapter")


def _narrowing(config: dict[str, Any], where: str) -> _Narrowing:
    """exclude_modules, layers_to_transform and layers_pattern, refused where PEFT's LoraConfig refuses them."""
    where_file = str(Path(where) / ADAPTER_CONFIG)
    excluded = names_field(config, "exclude_modules", where_file)
    layers = read_field(config, "layers_to_transform", None, is_layer_choice, "a layer index or a list of them",
                        where_file)
    patterns = read_field(config, "layers_pattern", None, is_module_names, "a name or a list of names", where_file)
    listed = [patterns] if isinstance(patterns, str) else patterns or []
    # each alone first, so that the error's position is in the pattern as written
    require_regexes("layers_pattern", patterns, listed + [_layer_regex(p) for p in listed],
                     "fix the regex in 'layers_pattern' (the name of the layers' module list, e.g. \"layers\")",
                     where_file)
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
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
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


def _matches(module: str, names: str | list[str]) -> bool:
    """PEFT's rule: a string is a regex the whole name must match (``names_field`` checked that it compiles), a
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
    index = _layer_index(module, narrowing.patterns)
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
        match = next(filter(None, (re.match(_layer_regex(p), module) for p in patterns)), None)
    return int(match.group(1)) if match else None


def _layer_regex(pattern: str) -> str:
    """PEFT's regex for the layer index after a layers_pattern name (``_narrowing`` checked that it compiles)."""
    return rf"(?:^|.*?\.){pattern}\.(\d+)\."
