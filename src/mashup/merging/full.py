"""Merge full fine-tunes tensor by tensor, streaming safetensors shards in and out."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mashup.errors import MashupError, MergeError
from mashup.io import drop_json_field, loaded_weight_files
from mashup.io.files import EXPLICIT_WEIGHTS, SAFETENSORS_INDEX, explicit_weights_name
from mashup.library.records import CheckpointRecord
from mashup.merging.plan import MergePlan
from mashup.merging.tensors import require_finite, require_finite_output

INDEX_NAME = "model.safetensors.index.json"
MAX_SHARD_BYTES = 2 * 1024**3
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
               "chat_template.jinja", "chat_template.json")
Tensors = dict[str, torch.Tensor]


class WeightReader:
    """Read a model dir's tensors one at a time: a single file, several files, or an index."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)
        self.files = {}
        # the files transformers loads: not another copy beside them (Mistral's consolidated.safetensors)
        listed = (self.model_dir / SAFETENSORS_INDEX).is_file() or any(self.model_dir.glob("*.safetensors"))
        for path in loaded_weight_files(self.model_dir) if listed else []:
            with safe_open(str(path), framework="pt") as handle:
                self.files.update({name: path for name in handle.keys()})
        if not self.files:
            raise MergeError("no safetensors weights to stream", str(self.model_dir),
                             "full merges read safetensors only; convert the checkpoint")

    def names(self) -> list[str]:
        return list(self.files)

    def get(self, name: str) -> torch.Tensor:
        # A fresh handle per tensor: the file mapping is dropped at once, so resident memory stays bounded.
        with safe_open(str(self.files[name]), framework="pt") as handle:
            return handle.get_tensor(name)


class ShardWriter:
    """Collect output tensors into shards of at most ``max_bytes``; an index is written for >1 shard."""

    def __init__(self, out_dir: Path, max_bytes: int = MAX_SHARD_BYTES) -> None:
        self.out_dir, self.max_bytes = out_dir, max_bytes
        self.pending: Tensors = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        save_file(self.pending, str(self.out_dir / f"shard-{len(self.shards):05d}.tmp"), metadata={"format": "pt"})
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        if self.pending or not self.shards:
            self._flush()
        if len(self.shards) == 1:
            (self.out_dir / "shard-00000.tmp").rename(self.out_dir / "model.safetensors")
            return
        weight_map = {}
        for i, names in enumerate(self.shards):
            file = f"model-{i + 1:05d}-of-{len(self.shards):05d}.safetensors"
            (self.out_dir / f"shard-{i:05d}.tmp").rename(self.out_dir / file)
            weight_map.update({name: file for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def copy_model_files(source: Path, out_dir: Path) -> None:
    """config.json, generation config and tokenizer files, so the output loads with from_pretrained. The output
    is model.safetensors: a config's ``transformers_weights`` (the source's own file) is dropped, as transformers'
    save_pretrained drops it."""
    for name in MODEL_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, out_dir / name)
    if (out_dir / "config.json").is_file() and explicit_weights_name(out_dir) is not None:
        drop_json_field(out_dir / "config.json", EXPLICIT_WEIGHTS)


def _open_inputs(plan: MergePlan, base_model_dir: Path | None, config_dir: Path
                 ) -> tuple[list[WeightReader], WeightReader | None, set[str]]:
    """The inputs' readers, the reference's (for task vectors) and the tied copies left out (``tied_copies``)."""
    readers = [WeightReader(Path(r.path)) for r in plan.records]
    names = set(readers[0].names())
    for record, reader in zip(plan.records[1:], readers[1:]):
        if set(reader.names()) != names:
            raise MergeError("tensor names differ from the first checkpoint", record.path, "merge one architecture")
    tied = tied_copies(plan.records, readers, names, config_dir)
    if not plan.method.uses_reference:
        return readers, None, tied
    if base_model_dir is None:
        raise MergeError(f"{plan.method.name} needs the base model for task vectors", None, "pass base_model_dir")
    reference = WeightReader(base_model_dir)
    missing = sorted(names - tied - set(reference.names()))
    if missing:
        raise MergeError(f"base model lacks tensor {missing[0]}", str(base_model_dir), "pass the right base model")
    return readers, reference, tied


def tied_copies(records: Sequence[CheckpointRecord], readers: Sequence[WeightReader], names: set[str],
                config_dir: Path) -> set[str]:
    """The weights that ``config_dir``'s config.json (the one the output gets) ties to others (the output head to the
    embeddings) and that the inputs store too, equal to those: left out of the merge, for transformers to tie again
    on load. Merged on their own, a random or magnitude sparsification would make them differ from what they are
    tied to, and such a checkpoint is refused on load; a base saved by transformers stores none of them. A stored
    copy of other values is refused here, and so is a weight the inputs tie and leave out that the output unties."""
    from mashup.weight_names import untied_copy, untied_what

    first, config = Path(records[0].path), config_dir / "config.json"
    tied = _tied_by(config_dir)
    if tied is None:  # a config no installed transformers builds: its tensors merge as they are
        return set()
    inputs_tied = tied if config_dir == first else _tied_by(first) or {}
    unstored = sorted(name for name in inputs_tied if name not in tied and name not in names)
    if unstored:
        raise MergeError(f"the checkpoints tie {unstored[0]} to {inputs_tied[unstored[0]]} and leave it out, but the "
                         f"config the merge output gets ({config}) unties it", str(first), "merge against a base "
                         "whose config.json ties them too")
    tied = {name: shared for name, shared in tied.items() if name in names and shared in names}
    fix = ("re-save the checkpoints with them tied, or merge against a base whose config.json unties them"
           if config_dir != first else "set tie_word_embeddings to false in the checkpoints' config.json to keep "
           "both, or re-save them with them tied")
    for record, reader in zip(records, readers):
        pair = untied_copy(tied, names, reader.get)
        if pair:
            raise MergeError(untied_what(pair, f"the merge output's config ({config})"), record.path, fix)
    return set(tied)


def _tied_by(model_dir: Path) -> dict[str, str] | None:
    """The weights ``model_dir``'s config.json ties, by the names its files hold them under
    (``weight_names.saved_tied_weights``); None where no installed transformers builds it."""
    from mashup.model_checks import model_on_meta
    from mashup.weight_names import saved_tied_weights

    try:
        return saved_tied_weights(model_on_meta(model_dir))
    except (MashupError, OSError):
        return None


def merge_full(plan: MergePlan, out_dir: Path, base_model_dir: Path | None = None,
               statistics: Sequence[Tensors] | None = None, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """Stream the merge: one tensor per input (plus reference and output) in memory at a time."""
    config_dir = base_model_dir or Path(plan.records[0].path)  # the config.json (and tokenizer) the output gets
    readers, reference, tied = _open_inputs(plan, base_model_dir, config_dir)
    writer = ShardWriter(out_dir, max_shard_bytes)
    without_statistics = 0
    for name in readers[0].names():
        if name in tied:
            continue
        tensors = [reader.get(name) for reader in readers]
        for record, tensor in zip(plan.records, tensors):
            require_finite(tensor, name, record.id or record.path)
        if not tensors[0].is_floating_point():
            writer.add(name, tensors[0])
            continue
        method, stats = plan.method, None
        if plan.method.statistic is not None:
            stats = [s[name] for s in statistics] if statistics and name in statistics[0] else None
            if stats is None and plan.method.statistic == "fisher":
                method, without_statistics = plan.method_fallback(), without_statistics + 1
        ref = reference.get(name) if reference is not None else None
        params = plan.params_for(stats, transposed=name in plan.conv1d_weights)
        merged = plan.merge(name, tensors, ref, params, method)
        require_finite_output(merged, name)
        writer.add(name, merged)
    writer.close()
    plan.warn_of_singular()
    if without_statistics:
        plan.warn(f"{without_statistics} tensors had no Fisher information and were averaged")
    copy_model_files(config_dir, out_dir)
