"""File-system helpers: atomic output directories (see mashup.atomic_dir), digests and safe weight loading.

``files``: weight files, their stats, loading and atomic writes; ``blocks``: one-block tensor reads;
``headers``: header reads and finite checks; ``hashing``: digests. What the rest of the package uses is
importable from here; ``block_span`` and ``unreadable_error`` are shared between these modules only.
"""

from mashup.atomic_dir import atomic_output_dir
from mashup.io.blocks import (read_dir_block, read_dir_block_into, read_dir_flat, read_file_block_into,
                              read_tensor_block, sorted_shapes)
from mashup.io.files import (drop_json_field, load_weight_dir, load_weights, loaded_weight_files, readable_size,
                             stat_files, weight_files, write_json, write_text_atomic)
from mashup.io.hashing import sha256_files
from mashup.io.headers import TensorSpec, check_finite, require_finite_tensors, tensor_shapes, tensor_specs

__all__ = ["TensorSpec", "atomic_output_dir", "check_finite", "drop_json_field", "load_weight_dir", "load_weights",
           "loaded_weight_files", "read_dir_block", "read_dir_block_into", "readable_size", "read_dir_flat",
           "read_file_block_into", "read_tensor_block", "require_finite_tensors", "sha256_files", "sorted_shapes",
           "stat_files", "tensor_shapes", "tensor_specs", "weight_files", "write_json", "write_text_atomic"]
