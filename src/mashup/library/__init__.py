"""Checkpoint library: catalog, records, freshness, base identity, compatibility and the score cache."""

from mashup.library.catalog import KINDS, Library, check_kind, default_library_dir
from mashup.library.compat import incompatibility, most_common_template, partition_compatible
from mashup.library.freshness import Freshness
from mashup.library.identity import BaseMatcher, base_identity, local_base_dir, resolve_identity
from mashup.library.records import CheckpointRecord, discover_checkpoints, inspect_checkpoint

__all__ = ["KINDS", "BaseMatcher", "CheckpointRecord", "Freshness", "Library", "base_identity", "check_kind",
           "default_library_dir", "discover_checkpoints", "incompatibility", "inspect_checkpoint", "local_base_dir",
           "most_common_template", "partition_compatible", "resolve_identity"]
