"""Merge LoRA adapters into a new PEFT LoRA adapter, in one of three spaces (ab, delta, concat)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from mashup.errors import MergeError
from mashup.io import load_weights, sha256_files, weight_files
from mashup.library.records import ADAPTER_CONFIG, CheckpointRecord
from mashup.merging.plan import MergePlan
from mashup.merging.registry import merge_tensors
from mashup.merging.tensors import require_finite

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
Tensors = dict[str, torch.Tensor]


def load_adapter(path: str | Path) -> Tensors:
    """All tensors of an adapter dir (or of a single safetensors file)."""
    path = Path(path)
    files = [path] if path.is_file() else weight_files(path)
    tensors: Tensors = {}
    for file in files:
        tensors.update(load_weights(file))
    return tensors


def module_names(tensors: Tensors, where: str) -> list[str]:
    """The LoRA module prefixes; anything but lora_A/lora_B tensors is refused."""
    extra = [n for n in tensors if ".lora_A." not in n and ".lora_B." not in n]
    if extra:
        raise MergeError(f"adapter holds non-LoRA tensors (e.g. {extra[0]}: modules_to_save or DoRA)", where,
                         "merge adapters that hold only lora_A/lora_B tensors")
    return sorted(n.split(".lora_A.")[0] for n in tensors if ".lora_A." in n)


def base_weight_name(module: str) -> str:
    """The base model's weight name for a LoRA module prefix (the key used for Fisher/Gram statistics)."""
    return (module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module) + ".weight"


def _reference_identity(reference: str | None) -> str | None:
    """References are the same when their weights are: adapters trained from one seed share an init."""
    if reference is None:
        return None
    path = Path(reference)
    if not path.exists():
        raise MergeError("init reference not found", reference, "re-register the adapter with the right --init")
    files = [path] if path.is_file() else weight_files(path)
    return sha256_files(files)


def load_reference(plan: MergePlan) -> Tensors | None:
    """The adapters' common init weights, or None (the zero adapter) with a warning."""
    if not plan.method.uses_reference:
        return None
    refs = {_reference_identity(r.init_reference) for r in plan.records}
    if len(refs) > 1:
        raise MergeError(f"adapters start from different init references {sorted(map(str, refs))}", None,
                         "task vectors need one common reference; merge adapters with the same init")
    ref = plan.records[0].init_reference if refs.pop() is not None else None
    if ref is None:
        if plan.method.uses_reference:
            plan.warn("no init_reference recorded for the adapters: the reference is the zero adapter, so each "
                      "task vector is the adapter itself (A and B, or s·B·A), not its change from initialisation")
        return None
    tensors = load_adapter(ref)
    missing = sorted(set(plan.records[0].shapes) - set(tensors))
    if missing:
        raise MergeError(f"init reference lacks tensor {missing[0]}", str(ref), "point at the adapters' init weights")
    return tensors


def _delta(tensors: Tensors, module: str, scale: float) -> torch.Tensor:
    b = tensors[f"{module}.lora_B.weight"].double()
    return scale * (b @ tensors[f"{module}.lora_A.weight"].double())


def refactor(delta: torch.Tensor, r: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(B, A, tail², total²) with scale·B·A the best rank-r approximation of ``delta``."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    root = s[:r].sqrt() / math.sqrt(scale)
    b, a = u[:, :r] * root, root[:, None] * vh[:r]
    if b.shape[1] < r:  # a matrix smaller than the rank: pad with zero components
        b = torch.nn.functional.pad(b, (0, r - b.shape[1]))
        a = torch.nn.functional.pad(a, (0, 0, 0, r - a.shape[0]))
    return b, a, float((s[r:] ** 2).sum()), float((s**2).sum())


def merge_ab(plan: MergePlan, adapters: Sequence[Tensors], reference: Tensors | None) -> Tensors:
    """Merge every lora_A and lora_B tensor on its own (the paper's reference code; cross terms for k>1)."""
    if len({r.lora_scale for r in plan.records}) > 1:
        raise MergeError("lora_mode ab needs adapters with the same alpha/r scale", None, "use lora_mode delta")
    out: Tensors = {}
    for name in adapters[0]:
        ref = None if reference is None else reference[name]
        out[name] = merge_tensors(plan.method, [a[name] for a in adapters], plan.weights, ref, plan.params,
                                  plan.generator(name))
    return out


def merge_delta(plan: MergePlan, adapters: Sequence[Tensors], reference: Tensors | None,
                statistics: Sequence[Tensors] | None, errors: dict[str, float]) -> Tensors:
    """Merge exact ΔW_i = s_i·B_i·A_i per module, then refactor to rank r by truncated SVD."""
    r, s_out = plan.records[0].lora_r or 0, plan.records[0].lora_scale
    scales = [rec.lora_scale for rec in plan.records]
    out: Tensors = {}
    tail_total, total_total = 0.0, 0.0
    for module in module_names(adapters[0], plan.records[0].path):
        deltas = [_delta(a, module, s) for a, s in zip(adapters, scales)]
        ref = None if reference is None else _delta(reference, module, s_out)
        stats = None if statistics is None else [st[base_weight_name(module)] for st in statistics]
        merged = merge_tensors(plan.method, deltas, plan.weights, ref, plan.params_for(stats),
                               plan.generator(module))
        b, a, tail, total = refactor(merged, r, s_out)
        dtype = adapters[0][f"{module}.lora_A.weight"].dtype
        out[f"{module}.lora_A.weight"], out[f"{module}.lora_B.weight"] = a.to(dtype), b.to(dtype)
        errors[module] = math.sqrt(tail / total) if total > 0 else 0.0
        tail_total, total_total = tail_total + tail, total_total + total
    errors["__overall__"] = math.sqrt(tail_total / total_total) if total_total > 0 else 0.0
    return out


def _concat_alpha(record: CheckpointRecord, rank: int) -> float:
    """The lora_alpha that keeps the first adapter's scale at the new rank."""
    scale = record.lora_scale
    alpha = scale * (math.sqrt(rank) if record.use_rslora else rank)
    return int(round(alpha)) if abs(alpha - round(alpha)) < 1e-9 else alpha


def merge_concat(plan: MergePlan, adapters: Sequence[Tensors], reference: Tensors | None) -> tuple[Tensors, int]:
    """Stack c_i·A_i and s_i/s_out·B_i: exact for linear methods, at rank Σ r_i (+ r if the reference counts)."""
    linear = plan.method.linear_coefficients(plan.weights, plan.params)
    if linear is None:
        raise MergeError(f"lora_mode concat only supports average/task_arithmetic, not {plan.method.name}", None,
                         "use lora_mode delta")
    coefficients, ref_coefficient = linear
    scales = [rec.lora_scale for rec in plan.records]
    parts = list(zip(adapters, coefficients, scales))
    if reference is not None and ref_coefficient != 0 and any(
            t.count_nonzero() for n, t in reference.items() if ".lora_B." in n):
        parts.append((reference, ref_coefficient, plan.records[0].lora_scale))
    rank = sum(t[next(n for n in t if ".lora_A." in n)].shape[0] for t, _, _ in parts)
    s_out = plan.records[0].lora_scale  # _concat_alpha keeps this scale at the new rank
    out: Tensors = {}
    for module in module_names(adapters[0], plan.records[0].path):
        a_name, b_name = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
        out[a_name] = torch.cat([c * t[a_name].float() for t, c, _ in parts]).to(adapters[0][a_name].dtype)
        out[b_name] = torch.cat([s / s_out * t[b_name].float() for t, _, s in parts], dim=1).to(
            adapters[0][b_name].dtype)
    return out, rank


def write_adapter(plan: MergePlan, tensors: Tensors, out_dir: Path, rank: int | None = None) -> None:
    """adapter_config.json from the first adapter (r/alpha updated when the rank changes) + the weights."""
    first = plan.records[0]
    config = json.loads((Path(first.path) / ADAPTER_CONFIG).read_text())
    if rank is not None and rank != first.lora_r:
        config["r"], config["lora_alpha"] = rank, _concat_alpha(first, rank)
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file({n: t.contiguous() for n, t in tensors.items()}, str(out_dir / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})


def merge_lora(plan: MergePlan, out_dir: Path, statistics: Sequence[Tensors] | None = None) -> dict[str, float]:
    """Merge the plan's adapters into a PEFT adapter dir; returns SVD errors per module (delta mode)."""
    adapters = []
    for record in plan.records:
        tensors = load_adapter(record.path)
        module_names(tensors, record.path)
        for name, tensor in tensors.items():
            require_finite(tensor, name, record.id or record.path)
        adapters.append(tensors)
    reference = load_reference(plan)
    errors: dict[str, float] = {}
    rank = None
    if plan.lora_mode == "ab":
        merged = merge_ab(plan, adapters, reference)
    elif plan.lora_mode == "delta":
        merged = merge_delta(plan, adapters, reference, statistics, errors)
    else:
        merged, rank = merge_concat(plan, adapters, reference)
    for name, tensor in merged.items():
        require_finite(tensor, name, "the merged output")
    write_adapter(plan, merged, out_dir, rank)
    return errors
