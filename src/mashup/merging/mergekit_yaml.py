"""The mergekit YAML equivalent to a full-model merge, for reproducing or cross-checking it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from mashup.config import MergeConfig
from mashup.errors import MergeError
from mashup.library.records import CheckpointRecord
from mashup.merging.plan import build_plan

MERGEKIT_NAMES = {"average": "linear", "task_arithmetic": "task_arithmetic", "ties": "ties",
                  "dare_linear": "dare_linear", "dare_ties": "dare_ties"}


def export_mergekit_yaml(records: Sequence[CheckpointRecord], config: MergeConfig, base_model: str) -> str:
    """A mergekit config with the same method, weights, density, normalize and lambda.

    DARE caveat (in a comment): mergekit >= PR #505 rescales survivors to the delta's L1 norm, we by 1/density.
    """
    plan = build_plan(records, config)
    if plan.kind != "full":
        raise MergeError("mergekit merges full models only (it has no LoRA-to-LoRA merge)", None,
                         "export full fine-tunes, or merge_and_unload the adapters first")
    name = MERGEKIT_NAMES.get(plan.method.name)
    if name is None or (plan.config.sign == "count" and plan.method.name in ("ties", "dare_ties")):
        raise MergeError(f"no mergekit equivalent for {plan.method.name} with sign={plan.config.sign}", None,
                         f"mergekit supports: {', '.join(sorted(MERGEKIT_NAMES))} (sign mass)")
    models = []
    for record, weight in zip(plan.records, plan.weights):
        parameters: dict[str, Any] = {"weight": weight}
        if plan.method.uses_density:
            parameters["density"] = plan.config.density
        models.append({"model": record.path, "parameters": parameters})
    document: dict[str, Any] = {"merge_method": name, "models": models,
                                "parameters": {"normalize": plan.config.normalize}, "dtype": "float32"}
    if plan.method.uses_reference:
        document["base_model"] = base_model
        document["parameters"]["lambda"] = plan.config.lambda_
    text = yaml.safe_dump(document, sort_keys=False)
    if plan.method.uses_density and "dare" in plan.method.name:
        text = ("# mashup rescales DARE survivors by 1/density; recent mergekit rescales to the delta's L1 norm,\n"
                "# so results match in expectation, not bit for bit.\n") + text
    return text
