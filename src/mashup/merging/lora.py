"""Merge LoRA adapters into a new PEFT LoRA adapter, in one of three spaces (ab, delta, concat).

Weights and lambda act linearly on ΔW in every mode; docs/merging.md gives the exact formula per mode."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from mashup.errors import MergeError
from mashup.io import load_weight_dir, load_weights
from mashup.library.lora_config import ADAPTER_CONFIG, ADAPTER_WEIGHTS, NARROWING_FIELDS
from mashup.library.records import CheckpointRecord
from mashup.merging.base import MergeParams
from mashup.merging.compat import refuse_other_tensors
from mashup.merging.lowrank import Factors, factor_dense, factor_stacked, peft_init_rows
from mashup.merging.plan import MergePlan
from mashup.merging.references import ZERO_REFERENCE, reference_identity
from mashup.merging.registry import merge_tensors
from mashup.merging.tensors import require_finite, require_finite_output

logger = logging.getLogger(__name__)
PEFT_PREFIX = "base_model.model."
Tensors = dict[str, torch.Tensor]


def load_adapter(path: str | Path) -> Tensors:
    """All tensors of an adapter dir (or of a single safetensors file)."""
    path = Path(path)
    return load_weights(path) if path.is_file() else load_weight_dir(path)


def module_names(tensors: Tensors, where: str) -> list[str]:
    """The LoRA module prefixes; anything but lora_A/lora_B tensors (lora_B biases included) is refused."""
    refuse_other_tensors(tensors, where)
    return sorted(n.split(".lora_A.")[0] for n in tensors if ".lora_A." in n)


def base_weight_name(module: str) -> str:
    """The base model's weight name for a LoRA module prefix (the key used for Fisher/Gram statistics)."""
    return (module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module) + ".weight"


def _a(module: str) -> str:
    return f"{module}.lora_A.weight"


def _b(module: str) -> str:
    return f"{module}.lora_B.weight"


def _bias(module: str) -> str:
    return f"{module}.lora_B.bias"


def _has_biases(adapters: Sequence[Tensors]) -> bool:
    """Whether any adapter has lora_B biases (PEFT's lora_bias): the output then gets one for every module."""
    return any(name.endswith(".lora_B.bias") for tensors in adapters for name in tensors)


def load_reference(plan: MergePlan) -> Tensors | None:
    """The adapters' common init weights, or None when the reference is zero (no task-vector offset)."""
    if not plan.method.uses_reference:
        return None
    record = plan.records[0]
    if reference_identity(record, plan.lora_mode) == ZERO_REFERENCE:  # check_records made them all equal
        if record.init_reference is None and plan.lora_mode == "ab":
            plan.warn("no init_reference recorded for the adapters: the reference is the zero adapter, so each "
                      "task vector is the adapter itself (A and B), not its change from initialisation")
        elif record.init_reference is None:
            logger.info("no init_reference recorded: ΔW₀ = 0 assumed (PEFT's default init has B = 0)")
        return None
    tensors = load_adapter(str(record.init_reference))
    missing = sorted(n for r in plan.records for n in r.shapes if n not in tensors)
    if missing:
        raise MergeError(f"init reference lacks tensor {missing[0]}", str(record.init_reference),
                         "point at the adapters' init weights")
    return tensors


def factor_settings(plan: MergePlan) -> tuple[list[float], list[float], MergeParams, MergeParams]:
    """Per-factor (weights_A, weights_B, params_A, params_B) for ab mode, so ΔW scales linearly.

    Like PEFT's add_weighted_adapter, a summed merge puts sign(w)·√|w| on A and √|w| on B (one adapter
    with weight w gives exactly w·ΔW); a normalising merge (average) takes the weighted mean of each
    factor, the paper's reference average. lambda is split the same way: sign(λ)·√|λ| and √|λ|.
    """
    weights, lam = plan.weights, plan.params.lambda_
    if plan.method.resolve_normalize(plan.params.normalize):
        weights_a, weights_b = list(weights), list(weights)
    else:
        weights_a = [math.copysign(math.sqrt(abs(w)), w) for w in weights]
        weights_b = [math.sqrt(abs(w)) for w in weights]
    params_a = replace(plan.params, lambda_=math.copysign(math.sqrt(abs(lam)), lam))
    params_b = replace(plan.params, lambda_=math.sqrt(abs(lam)))
    return weights_a, weights_b, params_a, params_b


def merge_ab(plan: MergePlan, adapters: Sequence[Tensors], reference: Tensors | None) -> Tensors:
    """Merge every lora_A and lora_B tensor on its own (the paper's reference code; cross terms for k>1)."""
    weights_a, weights_b, params_a, params_b = factor_settings(plan)
    out: Tensors = {}
    for name in adapters[0]:
        is_a = ".lora_A." in name
        ref = None if reference is None else reference[name]
        if name.endswith(".lora_B.bias"):  # s·b is not a product: the weights and lambda act on it as given
            weights, params = plan.weights, plan.params
        else:
            weights, params = (weights_a, params_a) if is_a else (weights_b, params_b)
        out[name] = merge_tensors(plan.method, [a[name] for a in adapters], weights, ref, params, plan.generator(name))
    return out


def _module_delta(tensors: Tensors, module: str, scale: float, shape: tuple[int, int]) -> torch.Tensor:
    """s·B·A in float32, or zeros when the adapter does not adapt this module."""
    if _a(module) not in tensors:
        return torch.zeros(shape)
    return scale * (tensors[_b(module)].float() @ tensors[_a(module)].float())


def _factor_linear(plan: MergePlan, module: str, adapters: Sequence[Tensors], reference: Tensors | None,
                   coefficients: tuple[list[float], float]) -> Factors:
    """Σ cᵢ·sᵢ·BᵢAᵢ (+ c_ref·ΔW₀) as stacked factors, factored exactly without forming ΔW."""
    each, of_reference = coefficients
    terms = [(c * record.lora_scale * t[_b(module)], t[_a(module)])
             for t, c, record in zip(adapters, each, plan.records) if _a(module) in t and c != 0]
    if reference is not None and of_reference != 0:
        terms.append((of_reference * plan.records[0].lora_scale * reference[_b(module)], reference[_a(module)]))
    if not terms:
        terms = [(torch.zeros(plan.modules[module][0], 1), torch.zeros(1, plan.modules[module][1]))]
    bs, as_ = zip(*terms)
    return factor_stacked(bs, as_, plan.lora_rank or 0, plan.output_scale, plan.generator(module + "/svd"))


def _module_statistics(plan: MergePlan, module: str, statistics: Sequence[Tensors]) -> list[torch.Tensor]:
    """Each checkpoint's statistic for ``module``'s weight, laid out for ΔW (out, in): a Conv1D stores its
    weight, so its Fisher, (in, out). A Gram is (in, in) either way."""
    name = base_weight_name(module)
    if any(name not in st for st in statistics):
        raise MergeError(f"{plan.method.name} has no {plan.method.statistic} statistics for {name}, which the adapters "
                         "adapt (not a Linear or Conv1D layer?)", None, "use a method without statistics (e.g. ties)")
    stats = [st[name] for st in statistics]
    if plan.method.statistic == "fisher" and name in plan.conv1d_weights:
        stats = [f.T for f in stats]
    return stats


def _factor_merged(plan: MergePlan, module: str, adapters: Sequence[Tensors], reference: Tensors | None,
                   statistics: Sequence[Tensors] | None) -> Factors:
    """Merge the dense ΔWᵢ entry by entry (missing modules: ΔW = 0), then a randomized truncated SVD."""
    shape = plan.modules[module]
    deltas = [_module_delta(t, module, record.lora_scale, shape) for t, record in zip(adapters, plan.records)]
    ref = None if reference is None else _module_delta(reference, module, plan.records[0].lora_scale, shape)
    stats = None if statistics is None else _module_statistics(plan, module, statistics)
    merged = plan.merge(module, deltas, ref, plan.params_for(stats))
    del deltas
    return factor_dense(merged, plan.lora_rank or 0, plan.output_scale, plan.generator(module + "/svd"))


def _merged_bias(plan: MergePlan, module: str, adapters: Sequence[Tensors], reference: Tensors | None) -> torch.Tensor:
    """The output's lora_B bias: the method applied to the biases' effects sᵢ·bᵢ (0 where an adapter has none),
    divided by the output scale s, as ΔW is (linear methods: Σ cᵢ·(sᵢ/s)·bᵢ). Fisher and RegMean have no
    statistics for it: the weighted mean."""
    out_features = plan.modules[module][0]

    def effect(tensors: Tensors, scale: float) -> torch.Tensor:
        return scale * tensors[_bias(module)].float() if _bias(module) in tensors else torch.zeros(out_features)

    scaled = [effect(t, record.lora_scale) for t, record in zip(adapters, plan.records)]
    ref = None if reference is None else effect(reference, plan.records[0].lora_scale)
    method = plan.method_fallback() if plan.method.statistic is not None else plan.method
    merged = merge_tensors(method, scaled, plan.weights, ref, plan.params, plan.generator(module + "/bias"))
    return merged / plan.output_scale


def merge_delta(plan: MergePlan, adapters: Sequence[Tensors], reference: Tensors | None,
                statistics: Sequence[Tensors] | None, errors: dict[str, float]) -> Tensors:
    """Merge ΔWᵢ = sᵢ·Bᵢ·Aᵢ per module, then factor to the output rank (exact for linear methods)."""
    linear = plan.method.linear_coefficients(plan.weights, plan.params) if plan.method.linear else None
    dtype = adapters[0][next(iter(adapters[0]))].dtype
    biases = _has_biases(adapters)
    if biases and plan.method.statistic == "fisher":
        plan.warn("the lora_B biases have no Fisher information and were averaged")
    out: Tensors = {}
    tail_total, total_total = 0.0, 0.0
    for module in plan.modules:
        if linear is not None:
            factors = _factor_linear(plan, module, adapters, reference, linear)
        else:
            factors = _factor_merged(plan, module, adapters, reference, statistics)
        out[_a(module)], out[_b(module)] = factors.a.to(dtype), factors.b.to(dtype)
        if biases:
            out[_bias(module)] = _merged_bias(plan, module, adapters, reference).to(dtype)
        errors[module] = factors.relative_error
        tail_total, total_total = tail_total + factors.tail, total_total + factors.total
    errors["__overall__"] = math.sqrt(tail_total / total_total) if total_total > 0 else 0.0
    return out


def merge_concat(plan: MergePlan, adapters: Sequence[Tensors], reference: Tensors | None) -> Tensors:
    """Stack cᵢ·Aᵢ and (sᵢ/s)·Bᵢ: exact for linear methods, at rank Σ rᵢ (+ the reference's if it counts);
    lora_B biases merge to Σ cᵢ·(sᵢ/s)·bᵢ (``_merged_bias``).

    A block for a module an adapter lacks gets B = 0 and a PEFT-style A (ΔW unchanged, still trainable).
    """
    linear = plan.method.linear_coefficients(plan.weights, plan.params)
    assert linear is not None  # check_records refuses concat with non-linear methods
    coefficients, ref_coefficient = linear
    parts = [(t, c, rec.lora_scale, rec.lora_r or 0) for t, c, rec in zip(adapters, coefficients, plan.records)]
    if reference is not None and ref_coefficient != 0:
        ref_rank = next(t.shape[0] for n, t in reference.items() if ".lora_A." in n)
        parts.append((reference, ref_coefficient, plan.records[0].lora_scale, ref_rank))
    plan.lora_rank = sum(rank for *_, rank in parts)
    dtype = adapters[0][next(iter(adapters[0]))].dtype
    biases = _has_biases(adapters)
    out: Tensors = {}
    for module, (out_features, in_features) in plan.modules.items():
        blocks_a, blocks_b = [], []
        for index, (tensors, coefficient, scale, rank) in enumerate(parts):
            if _a(module) in tensors:
                blocks_a.append(coefficient * tensors[_a(module)].float())
                blocks_b.append(scale / plan.output_scale * tensors[_b(module)].float())
            else:
                # one seed per block: equal filler blocks would get equal gradients and stay equal in training
                blocks_a.append(peft_init_rows(rank, in_features, plan.generator(f"{module}/fill/{index}")).float())
                blocks_b.append(torch.zeros(out_features, rank))
        out[_a(module)], out[_b(module)] = torch.cat(blocks_a).to(dtype), torch.cat(blocks_b, dim=1).to(dtype)
        if biases:
            out[_bias(module)] = _merged_bias(plan, module, adapters, reference).to(dtype)
    return out


def _alpha_for(record: CheckpointRecord, rank: int) -> float:
    """The lora_alpha that keeps ``record``'s scale at ``rank``."""
    alpha = record.lora_scale * (math.sqrt(rank) if record.use_rslora else rank)
    return int(round(alpha)) if abs(alpha - round(alpha)) < 1e-9 else alpha


def write_adapter(plan: MergePlan, tensors: Tensors, out_dir: Path) -> None:
    """adapter_config.json from the template adapter (r/alpha for the output rank, targets for exactly the
    modules the merge wrote) + weights."""
    template = plan.template or plan.records[0]
    inputs = {r.path: json.loads((Path(r.path) / ADAPTER_CONFIG).read_text()) for r in plan.records}
    config = dict(inputs[template.path])  # the template is one of the inputs (MergePlan.template)
    if plan.lora_rank is not None and plan.lora_rank != template.lora_r:
        config["r"], config["lora_alpha"] = plan.lora_rank, _alpha_for(template, plan.lora_rank)
    _set_targets(config, list(inputs.values()), tensors)
    if _has_biases([tensors]):  # the template may be an input without biases
        config["lora_bias"] = True
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file({n: t.contiguous() for n, t in tensors.items()}, str(out_dir / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})


def _set_targets(config: dict, inputs: list[dict], tensors: Tensors) -> None:
    """The output's targets: the inputs' own where they agree; their union of module names where they differ
    only in those; else (a regex, or a narrowing field on either side) the adapted modules by full name, which
    PEFT matches exactly: narrowing fields united across inputs that differ would pick modules no input adapted
    or drop ones an input did (PEFT then drops the tensors on load)."""
    fields = ("target_modules", *NARROWING_FIELDS)
    if len({json.dumps([c.get(f) for f in fields], sort_keys=True) for c in inputs}) == 1:
        return
    if not any(c.get(f) for c in inputs for f in NARROWING_FIELDS) and all(
            isinstance(c.get("target_modules"), list) for c in inputs):
        config["target_modules"] = sorted({t for c in inputs for t in c["target_modules"]})
        return
    config["target_modules"] = [base_weight_name(m).removesuffix(".weight") for m in module_names(tensors, "")]
    for field in NARROWING_FIELDS:
        config.pop(field, None)


def merge_lora(plan: MergePlan, out_dir: Path, statistics: Sequence[Tensors] | None = None) -> dict[str, float]:
    """Merge the plan's adapters into a PEFT adapter dir; returns factorization errors per module (delta mode)."""
    adapters = []
    for record in plan.records:
        tensors = load_adapter(record.path)
        module_names(tensors, record.path)
        for name, tensor in tensors.items():
            require_finite(tensor, name, record.id or record.path)
        adapters.append(tensors)
    reference = load_reference(plan)
    errors: dict[str, float] = {}
    if plan.lora_mode == "ab":
        merged = merge_ab(plan, adapters, reference)
    elif plan.lora_mode == "delta":
        merged = merge_delta(plan, adapters, reference, statistics, errors)
    else:
        merged = merge_concat(plan, adapters, reference)
    plan.warn_of_singular()
    for name, tensor in merged.items():
        require_finite_output(tensor, name)
    write_adapter(plan, merged, out_dir)
    return errors
