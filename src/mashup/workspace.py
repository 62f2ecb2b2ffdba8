"""What every verb needs: the resolved base model, its tokenizer, the formulation and the device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from mashup.config import DataConfig, Precision
from mashup.data.prompts import EncodedRequest, Formulation, PromptTemplate, build_request, encode_requests
from mashup.data.schema import MCExample
from mashup.data.target import resolve_formulation
from mashup.errors import CheckpointError
from mashup.evaluation import ScoreSettings
from mashup.io import loaded_weight_files, tensor_shapes
from mashup.model_checks import model_on_meta
from mashup.models import default_device, load_tokenizer, resolve_base_dir, resolve_precision


@dataclass
class Workspace:
    base: str
    base_dir: Path
    tokenizer: PreTrainedTokenizerBase
    formulation: Formulation
    device: torch.device
    precision: str  # resolved: fp32 or bf16 (bf16 autocast)
    max_length: int

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def encode(self, examples: Sequence[MCExample], template: PromptTemplate) -> list[EncodedRequest]:
        requests = [build_request(ex, template, self.formulation) for ex in examples]
        return encode_requests(self.tokenizer, requests, self.max_length)

    def settings(self, batch_size: int) -> ScoreSettings:
        return ScoreSettings(batch_size=batch_size, device=self.device, bf16=self.bf16,
                             pad_id=int(self.tokenizer.pad_token_id))


def count_parameters(model_dir: Path) -> int:
    """Parameter count from the safetensors headers, without loading the model.

    A base with only pickle weights is counted from its config on the meta device: a count is no reason to
    unpickle, and whether the weights may be unpickled is decided where they are loaded (``--allow-pickle``).
    """
    files = loaded_weight_files(model_dir, allow_pickle=True)
    if files[0].suffix != ".safetensors":
        return _count_from_config(model_dir)
    return sum(int(torch.Size(shape).numel()) for path in files for shape in tensor_shapes(path).values())


def _count_from_config(model_dir: Path) -> int:
    try:
        model = model_on_meta(model_dir)
    except OSError as exc:
        raise CheckpointError(f"cannot read the model config ({exc})".splitlines()[0], str(model_dir),
                              "check it is a complete HF model dir") from None
    return sum(param.numel() for param in model.parameters())


def open_workspace(base: str, data: DataConfig, precision: Precision | None = None) -> Workspace:
    """Resolve the base, its tokenizer, the answer formulation, the device and the precision once."""
    base_dir = resolve_base_dir(base)
    device = default_device()
    return Workspace(
        base=base, base_dir=base_dir, tokenizer=load_tokenizer(base_dir),
        formulation=resolve_formulation(data.scoring, count_parameters(base_dir)), device=device,
        precision=resolve_precision(precision, device), max_length=data.max_length,
    )
