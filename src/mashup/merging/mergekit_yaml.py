"""The mergekit YAML equivalent to a full-model merge, for reproducing or cross-checking it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mashup.config import MergeConfig
from mashup.errors import MashupError, MergeError
from mashup.io import write_text_atomic
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


def require_free_export(path: Path, out: Path) -> None:
    """The export file must be new, outside the merge's ``out`` dir, in a dir that exists and can be written."""
    target, out_dir = Path(path).absolute().resolve(), Path(out).absolute().resolve()
    if target == out_dir or out_dir in target.parents:
        raise MashupError("the --export-mergekit file is inside the merge's --out dir", str(path),
                          "write it outside --out")
    if path.exists() or path.is_symlink():
        raise MashupError("the --export-mergekit file already exists", str(path), "choose another path or remove it")
    if not path.parent.is_dir():
        raise MashupError("no such dir for the --export-mergekit file", str(path.parent),
                          "create it or choose another path")
    if not os.access(path.parent, os.W_OK):
        raise MashupError("cannot write the --export-mergekit file here (permission denied)", str(path.parent),
                          "choose a dir you can write to")


def write_export(path: Path, text: str) -> None:
    """Write the export atomically; a failure is one line naming ``path`` (not the temp file beside it)."""
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise MashupError(f"cannot write the --export-mergekit file ({exc.strerror or exc})", str(path),
                          "check the path and its permissions") from None
