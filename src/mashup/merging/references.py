"""Init references of LoRA adapters (the starting point of their task vectors), compared by what matters.

In ``ab`` mode a task vector is (A − A₀, B − B₀), so the reference's bytes matter. In ``delta`` and
``concat`` mode it is ΔW − ΔW₀ with ΔW₀ = s·B₀·A₀; PEFT's default init has B₀ = 0, so ΔW₀ = 0 for
every such adapter whatever its A₀, and all of them share the zero reference.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from mashup.errors import MergeError
from mashup.io import sha256_files, weight_files
from mashup.library.records import CheckpointRecord

ZERO_REFERENCE = "zero"
BASE_REFERENCE = "base model"


@dataclass(frozen=True)
class ReferenceFacts:
    digest: str
    zero_b: bool  # every lora_B tensor is exactly zero, so ΔW₀ = 0


def _reference_files(reference: str) -> list[Path]:
    path = Path(reference)
    if not path.exists():
        raise MergeError("init reference not found", reference, "re-register the adapter with the right --init")
    return [path] if path.is_file() else weight_files(path)


@functools.lru_cache(maxsize=1024)
def _facts(files: tuple[tuple[str, int, int], ...]) -> ReferenceFacts:
    """Digest and B₀ = 0 check, cached per (path, size, mtime) so a library shares one read per file."""
    paths = [Path(name) for name, _, _ in files]
    zero_b = True
    for path in paths:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                if ".lora_B." in name and handle.get_tensor(name).count_nonzero():
                    zero_b = False
                    break
        if not zero_b:
            break
    return ReferenceFacts(sha256_files(paths), zero_b)


def reference_facts(reference: str) -> ReferenceFacts:
    """What an init reference holds: its content digest and whether its B tensors are all zero."""
    files = []
    for path in _reference_files(reference):
        if path.suffix != ".safetensors":
            raise MergeError("init reference is not safetensors", str(path), "save the init weights as safetensors")
        stat = path.stat()
        files.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    return _facts(tuple(files))


def reference_identity(record: CheckpointRecord, lora_mode: str | None) -> str:
    """The identity of ``record``'s task-vector reference in ``lora_mode`` (full models: the base)."""
    if record.kind == "full":
        return BASE_REFERENCE
    if record.init_reference is None:
        return ZERO_REFERENCE
    facts = reference_facts(record.init_reference)
    if lora_mode == "ab":
        return f"sha256:{facts.digest}"
    if facts.zero_b:
        return ZERO_REFERENCE
    # ΔW₀ = s·B₀·A₀ depends on the adapter's own scale as well as on the file.
    return f"sha256:{facts.digest}@scale={record.lora_scale:.17g}"
