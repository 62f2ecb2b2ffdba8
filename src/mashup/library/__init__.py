"""Checkpoint library: catalog, records and compatibility."""

from mashup.library.catalog import Library, default_library_dir
from mashup.library.compat import incompatibility, partition_compatible
from mashup.library.records import CheckpointRecord, inspect_checkpoint

__all__ = ["CheckpointRecord", "Library", "default_library_dir", "incompatibility", "inspect_checkpoint",
           "partition_compatible"]
