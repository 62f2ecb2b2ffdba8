"""Merging checkpoints: methods, a registry, tensor-level merges, and the checkpoint-level API."""

from mashup.merging.api import MergeReport, merge_checkpoints
from mashup.merging.base import MergeMethod, MergeParams
from mashup.merging.compat import merge_compatibility, reference_key, resolve_lora_mode
from mashup.merging.fisher import estimate_fisher
from mashup.merging.mergekit_yaml import export_mergekit_yaml
from mashup.merging.regmean import estimate_gram
from mashup.merging.registry import get_merge_method, merge_method_names, merge_tensors, register_merge_method

__all__ = ["MergeMethod", "MergeParams", "MergeReport", "estimate_fisher", "estimate_gram", "export_mergekit_yaml",
           "get_merge_method", "merge_checkpoints", "merge_compatibility", "merge_method_names", "merge_tensors",
           "reference_key", "register_merge_method", "resolve_lora_mode"]
