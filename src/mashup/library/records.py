"""What the catalog knows about one checkpoint, and how it is read from disk."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mashup.errors import CheckpointError, MashupError
from mashup.io import sha256_files, stat_files, tensor_shapes, weight_files

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


def _read_json(path: Path) -> dict[str, Any]:
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


def inspect_lora(path: Path, task: str | None, allow_pickle: bool, check_values: bool = False) -> CheckpointRecord:
    config = _read_json(path / ADAPTER_CONFIG)
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise CheckpointError(f"peft_type is {config.get('peft_type')!r}, only LORA is supported", str(path))
    if "rank_pattern" in config and config["rank_pattern"] or config.get("alpha_pattern"):
        raise CheckpointError("per-module rank/alpha patterns are not supported", str(path))
    files = weight_files(path, allow_pickle=allow_pickle)
    shapes = _all_shapes(files)
    settings = lora_settings(config)
    _check_lora_shapes(shapes, settings["lora_r"], str(path))
    stats = stat_files(files)  # before hashing: a change during hashing then shows as a stats mismatch later
    return CheckpointRecord(
        id="", kind="lora", path=str(path.resolve()), sha256=sha256_files(files, check_values=check_values),
        file_stats=stats,
        base_model=str(config.get("base_model_name_or_path") or ""), architecture=str(config.get("task_type") or ""),
        shapes=shapes, task=task, **settings,
    )


LORA_SETTINGS = ("lora_r", "lora_alpha", "target_modules", "use_rslora", "use_dora")


def lora_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What an adapter_config.json says about how the factors apply (the record's fields of the same names):
    rank, alpha, rsLoRA, DoRA and the target modules. The weights' digest does not cover them."""
    r = int(config.get("r", 8))
    targets = config.get("target_modules") or []
    return {"lora_r": r, "lora_alpha": float(config.get("lora_alpha", r)),
            "target_modules": [targets] if isinstance(targets, str) else sorted(targets),
            "use_rslora": bool(config.get("use_rslora", False)), "use_dora": bool(config.get("use_dora", False))}


def lora_config_change(record: CheckpointRecord) -> str | None:
    """How the adapter_config.json on disk now differs from what ``record`` registered, or None."""
    try:
        now = lora_settings(_read_json(Path(record.path) / ADAPTER_CONFIG))
    except MashupError as exc:
        return f"{ADAPTER_CONFIG} cannot be read now ({exc.what})"
    changes = [f"{name} {getattr(record, name)} -> {value}" for name, value in now.items()
               if value != getattr(record, name)]
    return f"{ADAPTER_CONFIG} changed since registration ({'; '.join(changes)})" if changes else None


def inspect_full(path: Path, base: str | None, task: str | None, allow_pickle: bool, check_values: bool = False
                 ) -> CheckpointRecord:
    config = _read_json(path / MODEL_CONFIG)
    if not base:
        raise CheckpointError("a full fine-tune needs its base model", str(path), "pass --base MODEL")
    files = weight_files(path, allow_pickle=allow_pickle)
    architecture = (config.get("architectures") or [config.get("model_type", "")])[0]
    stats = stat_files(files)
    return CheckpointRecord(
        id="", kind="full", path=str(path.resolve()), sha256=sha256_files(files, check_values=check_values),
        file_stats=stats, base_model=base, architecture=str(architecture), shapes=_all_shapes(files), task=task,
    )


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
