"""What the catalog knows about one checkpoint, and how it is read from disk."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mashup.errors import CheckpointError, MashupError
from mashup.io import non_float_tensors, sha256_files, stat_files, tensor_shapes, weight_files

Kind = Literal["lora", "full"]
ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"


@dataclass
class CheckpointRecord:
    """One catalog entry. ``shapes`` maps tensor names to shapes as stored on disk."""

    id: str
    kind: Kind
    path: str
    sha256: str
    base_model: str
    architecture: str
    shapes: dict[str, list[int]]
    task: str | None = None
    lora_r: int | None = None
    lora_alpha: float | None = None
    target_modules: list[str] | None = None
    use_rslora: bool = False
    use_dora: bool = False
    init_reference: str | None = None  # weights the adapter started from, for task vectors
    metadata: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    file_stats: list[dict[str, Any]] = field(default_factory=list)  # per weight file, as hashed (io.stat_files)
    base_identity: str | None = None  # content digest of the base (library.identity), None if not resolvable
    data_fingerprint: str | None = None  # mashup.data.schema.examples_fingerprint of its training task
    lineage: dict[str, Any] = field(default_factory=dict)  # e.g. merged_from, trained_on, run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def lora_scale(self) -> float:
        """The factor PEFT applies to B @ A (alpha / r, or alpha / sqrt(r) with rslora)."""
        if self.lora_r is None or self.lora_alpha is None:
            raise CheckpointError("not a LoRA adapter", self.path)
        return self.lora_alpha / (self.lora_r**0.5 if self.use_rslora else self.lora_r)

    @property
    def applies(self) -> str | None:
        """A LoRA's ``lora_settings`` as one string (None for a full fine-tune): what, beside the weights' digest,
        a cached score or prefilter value depends on, since the digest covers the weights alone."""
        if self.kind != "lora":
            return None
        return json.dumps({name: getattr(self, name) for name in LORA_SETTINGS}, separators=(",", ":"))


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding an object (a checkpoint's config), or one CheckpointError line."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path.name} ({exc})", str(path), "fix or re-save the file") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} is not a JSON object", str(path), "fix or re-save the file")
    return data


def _all_shapes(files: list[Path]) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for path in files:
        shapes.update(tensor_shapes(path))
    return shapes


def _check_lora_shapes(shapes: dict[str, list[int]], r: int, where: str) -> None:
    a_names = [n for n in shapes if ".lora_A." in n]
    if not a_names:
        raise CheckpointError("adapter weights hold no lora_A/lora_B tensors", where, "is this a LoRA adapter?")
    for name in a_names:
        b_name = name.replace(".lora_A.", ".lora_B.")
        if b_name not in shapes:
            raise CheckpointError(f"tensor {b_name} is missing", where, "re-save the adapter")
        if shapes[name][0] != r or shapes[b_name][-1] != r:
            raise CheckpointError(
                f"tensor {name} has rank {shapes[name][0]} but adapter_config.json says r={r}", where, "re-save the adapter"
            )


def _lora_module(name: str) -> str:
    """The module a saved lora_A/lora_B tensor adapts, named as PEFT matches target_modules against it."""
    module = re.split(r"\.lora_[AB]\.", name, maxsplit=1)[0]
    return module.removeprefix("base_model.model.")


def _targeted(module: str, targets: str | list[str]) -> bool:
    """PEFT's rule (tuners_utils.check_target_module_exists): a string is a regex the whole name must match,
    a list entry matches the name itself or its last dotted parts."""
    if isinstance(targets, str):
        try:
            return re.fullmatch(targets, module) is not None
        except re.error:
            return True  # not ours to judge: PEFT reports it when loading
    return any(module == t or module.endswith(f".{t}") for t in targets)


def _check_lora_targets(shapes: dict[str, list[int]], config: dict[str, Any], where: str) -> None:
    """Refuse factors of modules that target_modules leaves out: PEFT would silently drop them on load."""
    targets = config.get("target_modules")
    if not targets or targets == "all-linear" or config.get("target_parameters"):
        return  # PEFT's defaults for the architecture, or layers these names do not describe
    layers = config.get("layers_to_transform")
    layers = [layers] if isinstance(layers, int) else layers
    for name in shapes:
        if ".lora_A." not in name and ".lora_B." not in name:
            continue
        module = _lora_module(name)
        if not _targeted(module, targets):
            raise CheckpointError(
                f"tensor {name} adapts module '{module}', which target_modules {json.dumps(targets)} "
                f"in {ADAPTER_CONFIG} does not cover (PEFT would drop it on load)", where,
                "fix target_modules or re-save the adapter")
        layer = re.search(r"\.(\d+)\.", f".{module}.")
        if isinstance(layers, list) and layer is not None and int(layer.group(1)) not in layers:
            raise CheckpointError(
                f"tensor {name} is in layer {layer.group(1)}, which layers_to_transform {json.dumps(layers)} "
                f"in {ADAPTER_CONFIG} leaves out (PEFT would drop it on load)", where,
                "fix layers_to_transform or re-save the adapter")


def _check_lora_dtypes(files: list[Path], where: str) -> None:
    for path in files:
        bad = [n for n in non_float_tensors(path) if ".lora_A." in n or ".lora_B." in n]
        if bad:
            raise CheckpointError(f"tensor {bad[0]} is not floating point ({len(bad)} such LoRA tensor(s))",
                                  str(path), "re-save the adapter in float32, float16 or bfloat16")


def inspect_lora(path: Path, task: str | None, allow_pickle: bool, check_values: bool = False) -> CheckpointRecord:
    config = read_json_object(path / ADAPTER_CONFIG)
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise CheckpointError(f"peft_type is {config.get('peft_type')!r}, only LORA is supported", str(path))
    if "rank_pattern" in config and config["rank_pattern"] or config.get("alpha_pattern"):
        raise CheckpointError("per-module rank/alpha patterns are not supported", str(path))
    settings = lora_settings(config, str(path / ADAPTER_CONFIG))
    files = weight_files(path, allow_pickle=allow_pickle)
    shapes = _all_shapes(files)
    _check_lora_shapes(shapes, settings["lora_r"], str(path))
    _check_lora_targets(shapes, config, str(path))
    _check_lora_dtypes(files, str(path))
    stats = stat_files(files)  # before hashing: a change during hashing then shows as a stats mismatch later
    return CheckpointRecord(
        id="", kind="lora", path=str(path.resolve()), sha256=sha256_files(files, check_values=check_values),
        file_stats=stats,
        base_model=str(config.get("base_model_name_or_path") or ""), architecture=str(config.get("task_type") or ""),
        shapes=shapes, task=task, **settings,
    )


LORA_SETTINGS = ("lora_r", "lora_alpha", "target_modules", "use_rslora", "use_dora")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_targets(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, list)
                                                       and all(isinstance(t, str) for t in value))


def _is_flag(value: Any) -> bool:
    return value is None or isinstance(value, bool)


def _field(config: dict[str, Any], name: str, default: Any, valid: Callable[[Any], bool], expected: str,
           where: str) -> Any:
    """``config[name]`` (``default`` if absent), refused unless of the type PEFT expects."""
    value = config.get(name, default)
    if not valid(value):
        shown = json.dumps(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise CheckpointError(f"{ADAPTER_CONFIG} field '{name}' is {shown}, expected {expected}", where,
                              f"fix '{name}' in the file or re-save the adapter")
    return value


def lora_settings(config: dict[str, Any], where: str = ADAPTER_CONFIG) -> dict[str, Any]:
    """What an adapter_config.json (at ``where``) says about how the factors apply (the record's fields of the
    same names): rank, alpha, rsLoRA, DoRA and the target modules. The weights' digest does not cover them."""
    r = _field(config, "r", 8, _is_count, "a positive integer", where)
    alpha = _field(config, "lora_alpha", r, _is_number, "a number", where)
    targets = _field(config, "target_modules", None, _is_targets, "a list of module names or a regex string",
                     where) or []
    return {"lora_r": r, "lora_alpha": float(alpha),
            "target_modules": [targets] if isinstance(targets, str) else sorted(targets),
            "use_rslora": bool(_field(config, "use_rslora", False, _is_flag, "true or false", where)),
            "use_dora": bool(_field(config, "use_dora", False, _is_flag, "true or false", where))}


def lora_config_change(record: CheckpointRecord) -> str | None:
    """How the adapter_config.json on disk now differs from what ``record`` registered, or None."""
    config_path = Path(record.path) / ADAPTER_CONFIG
    try:
        now = lora_settings(read_json_object(config_path), str(config_path))
    except MashupError as exc:
        return f"{ADAPTER_CONFIG} cannot be read now ({exc.what})"
    changes = [f"{name} {getattr(record, name)} -> {value}" for name, value in now.items()
               if value != getattr(record, name)]
    return f"{ADAPTER_CONFIG} changed since registration ({'; '.join(changes)})" if changes else None


def inspect_full(path: Path, base: str | None, task: str | None, allow_pickle: bool, check_values: bool = False
                 ) -> CheckpointRecord:
    config = read_json_object(path / MODEL_CONFIG)
    if not base:
        raise CheckpointError("a full fine-tune needs its base model", str(path), "pass --base MODEL")
    files = weight_files(path, allow_pickle=allow_pickle)
    shapes = _all_shapes(files)
    _check_fits_base(shapes, base, str(path))
    architecture = (config.get("architectures") or [config.get("model_type", "")])[0]
    stats = stat_files(files)
    return CheckpointRecord(
        id="", kind="full", path=str(path.resolve()), sha256=sha256_files(files, check_values=check_values),
        file_stats=stats, base_model=base, architecture=str(architecture), shapes=shapes, task=task,
    )


# a tied output head is saved by some tools and left out by others; whether the base ties it is known once the
# model is built, where models.load_full_weights_into refuses an untied one that is missing
_TIED_HEAD = "lm_head.weight"


def base_tensor_shapes(base: str) -> dict[str, list[int]] | None:
    """Names and shapes of the tensors of the local model dir ``base`` names, from its safetensors headers (no
    weights read); None when it is not local or not readable so."""
    from mashup.library.identity import local_base_dir  # identity imports this module

    model_dir = local_base_dir(base)
    files = sorted(model_dir.glob("*.safetensors")) if model_dir else []
    try:
        return _all_shapes(files) if files else None
    except CheckpointError:
        return None


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


def _check_fits_base(shapes: dict[str, list[int]], base: str, where: str) -> None:
    base_shapes = base_tensor_shapes(base)
    difference = full_shapes_difference(shapes, base_shapes) if base_shapes is not None else None
    if difference:
        raise CheckpointError(f"{difference}: not a fine-tune of base '{base}'", where,
                              "register it with the --base it was fine-tuned from, or re-save it")


def _same_base(a: str, b: str) -> bool:
    """Two spellings of one base by content (resolved offline); False when either cannot be resolved."""
    from mashup.library.identity import resolve_identity  # identity imports this module

    identity = resolve_identity(a)
    return identity is not None and identity == resolve_identity(b)


def inspect_checkpoint(
    path: str | Path, *, base: str | None = None, task: str | None = None, allow_pickle: bool = False,
    check_values: bool = False,
) -> CheckpointRecord:
    """Read a PEFT LoRA adapter dir or a full HF model dir; refuse what cannot be read, with the reason.
    ``check_values`` also refuses weights holding NaN or inf, checked as they are hashed."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError("checkpoint directory not found", str(path), "pass a PEFT adapter or HF model dir")
    if (path / ADAPTER_CONFIG).exists():
        record = inspect_lora(path, task, allow_pickle, check_values)
        if base and record.base_model and base != record.base_model and not _same_base(base, record.base_model):
            raise CheckpointError(
                f"adapter names base '{record.base_model}' but --base is '{base}'", str(path), "drop --base or fix it"
            )
        record.base_model = base or record.base_model
        if not record.base_model:
            raise CheckpointError("adapter_config.json names no base model", str(path), "pass --base MODEL")
        return record
    if (path / MODEL_CONFIG).exists():
        return inspect_full(path, base, task, allow_pickle, check_values)
    raise CheckpointError("neither adapter_config.json nor config.json found", str(path),
                          "pass a PEFT adapter dir or a full HF model dir")
