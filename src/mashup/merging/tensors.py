"""Small tensor checks shared by the LoRA and full-model merges."""

from __future__ import annotations

import torch

from mashup.errors import MergeError


def require_finite(tensor: torch.Tensor, name: str, where: str) -> None:
    """Refuse NaN/inf, naming the tensor and the checkpoint (or 'merged output')."""
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise MergeError(f"tensor {name} holds NaN or inf", where, "the checkpoint is broken; drop it from the merge")
