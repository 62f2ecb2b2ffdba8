"""What a LoRA adapter_config.json says (rank, alpha, targets and the other fields PEFT reads), refused where PEFT
could not load it, and whether the adapter's tensors have the shapes and dtypes it implies. Which modules it
makes PEFT adapt is ``lora_targets``'.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mashup.errors import CheckpointError
from mashup.io import TensorSpec
from mashup.library.values import is_count, is_int, is_number, shown

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LORA_SETTINGS = ("lora_r", "lora_alpha", "target_modules", "use_rslora", "use_dora")
PEFT_DEFAULTS = {"r": 8, "lora_alpha": 8}  # peft.LoraConfig's, which PEFT applies to a field the file leaves out
# the fields that narrow which modules target_modules picks: registration judges the factors against them, so an
# edit of them later makes the record stale, and a merge cannot unite inputs that differ in them
NARROWING_FIELDS = ("exclude_modules", "layers_to_transform", "layers_pattern")
_NAMES = "a list of module names or a regex string"
_FLAG = "true or false (or a number: 0 is false)"
ALL_LINEAR = "all-linear"  # PEFT's shorthand, compared case-insensitively; it picks linear layers once built


def is_module_names(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, list)
                                                       and all(isinstance(t, str) for t in value))


def _is_flag(value: Any) -> bool:
    """A flag as PEFT 0.21 reads it, by truth value (``if config.use_dora``, ``nn.Linear(bias=lora_bias)``): null,
    true, false or a number (0 false, any other true). A string is refused: PEFT would read "false" as true."""
    return value is None or isinstance(value, bool) or is_number(value)


def _as_flag(value: Any) -> Any:
    """0 and 1 (int or float) as the false and true PEFT takes them for; any other value, a bool too, as given."""
    return bool(value) if is_number(value) and value in (0, 1) else value


def is_layer_choice(value: Any) -> bool:
    return value is None or is_int(value) or (isinstance(value, list) and all(map(is_int, value)))


def _is_names(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _is_ranges(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(
        isinstance(r, list) and len(r) == 2 and all(map(is_int, r)) for r in value))


# PEFT 0.21's TaskType values: PeftConfig refuses any other non-null task_type on load
TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")
_INITS = '"gaussian", "eva", "orthogonal", "mica"'
_CONVERT = ("re-save it converted to plain LoRA (PEFT's path_initial_model_for_weight_conversion, which writes "
            "init_lora_weights true)")
_BASE_CHANGED_FIX = {"loftq": "register it against the base PEFT saved with it (set base_model_name_or_path to that "
                              "dir and init_lora_weights to true)"}


def is_lora_init(value: Any) -> bool:
    """Whether PEFT 0.21's ``LoraLayer.update_layer`` takes ``value`` as init_lora_weights on load: a falsy one
    (0 too) skips the init, a few names are compared case-insensitively, pissa and corda by prefix; any other
    string fails there with "Unknown initialization", any other number with an AttributeError."""
    if value is None or isinstance(value, bool) or value == "" or is_number(value) and value == 0:
        return True
    if not isinstance(value, str):
        return False
    if value.startswith("pissa"):  # pissa_init: "pissa", or "<...>_niter_<int>" for fast SVD
        parts = value.split("_niter_")
        return value == "pissa" or len(parts) == 2 and _is_int_text(parts[1])
    return (value.startswith("corda") or value.lower() in ("olora", "mica", "gaussian")
            or value in ("loftq", "eva", "orthogonal", "lora_ga"))


def changes_base(value: Any) -> bool:
    """Whether an adapter saved with this init_lora_weights was trained on other base weights than its base's: PiSSA,
    OLoRA, CorDA and LoRA-GA subtract the initial factors from the base as training starts (PEFT runs PiSSA and OLoRA
    again as it loads such an adapter; CorDA fails there without its preprocessing), LoftQ quantizes it. A converted
    one (PEFT's ``path_initial_model_for_weight_conversion``) is saved with ``true``."""
    return isinstance(value, str) and (value.startswith(("pissa", "corda")) or value.lower() == "olora"
                                       or value in ("loftq", "lora_ga"))


def _is_int_text(text: str) -> bool:
    try:
        int(text)  # as pissa_init parses the iteration count
    except ValueError:
        return False
    return True


# LoraConfig fields PEFT uses on load: a wrong type or value is a traceback there (a string dropout, a null bias,
# an unknown init or task type) or a silent misreading (the string "no" is a true fan_in_fan_out); absent ones default
_PEFT_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lora_dropout": (lambda v: is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "bias": (lambda v: v in ("none", "all", "lora_only"), 'one of "none", "all", "lora_only"'),
    "fan_in_fan_out": (_is_flag, _FLAG), "inference_mode": (_is_flag, _FLAG), "lora_bias": (_is_flag, _FLAG),
    "init_lora_weights": (is_lora_init, f"true, false or one of {_INITS}"),
    "modules_to_save": (_is_names, "a list of module names or null"),
    "target_parameters": (_is_names, "a list of parameter names or null"),
    "layer_replication": (_is_ranges, "a list of [start, end] layer ranges or null"),
    "task_type": (lambda v: v is None or v in TASK_TYPES, "null or one of " + ", ".join(f'"{t}"' for t in TASK_TYPES)),
}


def read_field(config: dict[str, Any], name: str, default: Any, valid: Callable[[Any], bool], expected: str,
           where: str) -> Any:
    """``config[name]`` (``default`` if absent), refused unless of a type (and value) PEFT takes."""
    value = config.get(name, default)
    if not valid(value):
        raise CheckpointError(f"{ADAPTER_CONFIG} field '{name}' is {shown(value)}, expected {expected}", where,
                              f"fix '{name}' in the file or re-save the adapter")
    return value


def require_regexes(name: str, value: Any, regexes: list[str], fix: str, where: str) -> None:
    """Refuse field ``name`` unless each of ``regexes`` (made of its ``value`` as PEFT makes them) compiles: on
    load PEFT would fail with a bare ``re.error``."""
    for regex in regexes:
        try:
            re.compile(regex)
        except re.error as exc:
            raise CheckpointError(f"{ADAPTER_CONFIG} field '{name}' is {shown(value)}, not a valid regex ({exc})",
                                  where, fix) from None


def names_field(config: dict[str, Any], name: str, where: str) -> str | list[str] | None:
    """A field naming modules as target_modules does; a string must compile, as PEFT matches it with
    ``re.fullmatch`` on load."""
    value = read_field(config, name, None, is_module_names, _NAMES, where)
    if isinstance(value, str):
        require_regexes(name, value, [value], f"fix the regex in '{name}' or list the module names instead", where)
    return value


def lora_settings(config: dict[str, Any], where: str = ADAPTER_CONFIG) -> dict[str, Any]:
    """What an adapter_config.json (at ``where``) says about how the factors apply (the record's fields of the
    same names): rank, alpha, rsLoRA, DoRA and the target modules. The weights' digest does not cover them."""
    r = read_field(config, "r", PEFT_DEFAULTS["r"], is_count, "a positive integer", where)
    # 0 scales the adapter to nothing: no update to score or merge (a merge could not factor a zero scale)
    alpha = read_field(config, "lora_alpha", PEFT_DEFAULTS["lora_alpha"], lambda v: is_number(v) and v != 0,
                       "a non-zero number", where)
    targets = names_field(config, "target_modules", where) or []
    return {"lora_r": r, "lora_alpha": float(alpha),
            "target_modules": [targets] if isinstance(targets, str) else sorted(targets),
            "use_rslora": bool(read_field(config, "use_rslora", False, _is_flag, _FLAG, where)),
            "use_dora": bool(read_field(config, "use_dora", False, _is_flag, _FLAG, where))}


def check_peft_fields(config: dict[str, Any], where: str = ADAPTER_CONFIG) -> None:
    """Refuse the other fields PEFT reads on load where of a type (or a value) it cannot use, naming the field and
    the file ``where``: what registers, or loads as an adapter, must be what PEFT can load. Training reads an init
    adapter's dropout against its own, narrower range (``init_lora_shape``), so ``lora_settings`` leaves it."""
    _refuse_number_init(config.get("init_lora_weights"), where)
    for name, (valid, expected) in _PEFT_FIELDS.items():
        if name in config:
            read_field(config, name, None, valid, expected, where)
    init = _as_flag(config.get("init_lora_weights", True))  # PEFT's default
    _require_bias_setting(config, init, where)
    if changes_base(init):
        raise CheckpointError(f"{ADAPTER_CONFIG} field 'init_lora_weights' is {shown(init)}: the adapter was trained "
                              "on rewritten base weights, so its factors are no update of the base", where,
                              _BASE_CHANGED_FIX.get(init, _CONVERT))


def _refuse_number_init(init: Any, where: str) -> None:
    """Refuse a number as init_lora_weights but 0 (false): PEFT's ``reset_lora_parameters`` takes any other as an
    init's name and fails on load with "'int' object has no attribute 'lower'"."""
    if is_number(init) and init != 0:
        raise CheckpointError(f"{ADAPTER_CONFIG} field 'init_lora_weights' is {shown(init)}, expected true, false or "
                              f"one of {_INITS}: PEFT takes 0 as false, and fails to load any other number", where,
                              "set 'init_lora_weights' to true in the file or re-save the adapter")


def _require_bias_setting(config: dict[str, Any], init: Any, where: str) -> None:
    """Refuse ``lora_bias`` with DoRA or an init (``_as_flag``'s) other than true or false, as PEFT's LoraConfig does
    on load."""
    dora = bool(config.get("use_dora"))
    if not config.get("lora_bias") or isinstance(init, bool) and not dora:
        return
    other = "use_dora" if dora else f"init_lora_weights {shown(init)}"
    fix = ("set use_dora or lora_bias to false, whichever the adapter was not trained with" if dora
           else "set init_lora_weights to true, or lora_bias to false if the adapter stores no lora_B bias")
    raise CheckpointError(f"{ADAPTER_CONFIG} sets lora_bias true with {other}, which PEFT refuses to load", where, fix)


def lora_narrowing(config: dict[str, Any]) -> dict[str, Any]:
    """The ``NARROWING_FIELDS`` as an adapter_config.json gives them (None where absent), kept by a record to tell
    when they change (compared by ``narrowing_choice``)."""
    return {name: config.get(name) for name in NARROWING_FIELDS}


def narrowing_choice(name: str, value: Any) -> Any:
    """A narrowing field's value as PEFT acts on it, so that spellings of one choice compare equal:
    ``layers_to_transform`` 0 and [0], null and an empty list or string, a list of names or layers in any order
    (PEFT makes it a set); other fields as given. Layer patterns keep their order: PEFT takes the first that finds
    an index."""
    if name not in NARROWING_FIELDS:
        return value
    if value is None or value in ("", []):
        return None
    if name == "layers_to_transform" and isinstance(value, int) or name == "layers_pattern" and isinstance(value, str):
        return [value]
    if name != "layers_pattern" and isinstance(value, list) and all(isinstance(v, (int, str)) for v in value):
        return sorted(set(value), key=repr)
    return value


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


def lora_base_difference(shapes: dict[str, list[int]], base_shapes: dict[str, list[int]]) -> str | None:
    """How an adapter's factors do not fit its base's modules: the first whose input (lora_A) or output (lora_B)
    size is not its module's; None when they fit. A module the base holds no 2-D weight of is left to loading."""
    for a_name in sorted(n for n in shapes if ".lora_A." in n):
        a, b = shapes[a_name], shapes.get(a_name.replace(".lora_A.", ".lora_B."))
        weight_name = f"{lora_module(a_name)}.weight"
        weight = base_shapes.get(weight_name)
        if b is None or weight is None or not len(a) == len(b) == len(weight) == 2:
            continue
        if [b[0], a[1]] in (weight, weight[::-1]):  # (out, in) of a Linear, or of a Conv1D, which stores it (in, out)
            continue
        wrong = a_name if a[1] not in weight else a_name.replace(".lora_A.", ".lora_B.")
        return f"tensor {wrong} has shape {shapes[wrong]}, which does not fit the base's {weight_name} {weight}"
    return None


def check_lora_dtypes(specs: Mapping[Path, Mapping[str, TensorSpec]]) -> None:
    """Refuse factors that are not floating point, naming the file (``specs``: each file's tensors)."""
    for path, tensors in specs.items():
        bad = [name for name, spec in tensors.items() if not spec.floating and is_factor(name)]
        if bad:
            raise CheckpointError(f"tensor {bad[0]} is not floating point ({len(bad)} such LoRA tensor(s))",
                                  str(path), "re-save the adapter in float32, float16 or bfloat16")


def lora_module(name: str) -> str:
    """The module a saved lora_A/lora_B tensor adapts, named as PEFT matches target_modules against it."""
    module = re.split(r"\.lora_[AB]\.", name, maxsplit=1)[0]
    return module.removeprefix("base_model.model.")
