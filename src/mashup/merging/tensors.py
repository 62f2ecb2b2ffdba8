"""Small tensor checks shared by the LoRA and full-model merges."""

from __future__ import annotations

import torch

from mashup.errors import MergeError

MERGED_OUTPUT = "the merged output"


def require_finite(tensor: torch.Tensor, name: str, where: str) -> None:
    """Refuse NaN/inf in an input checkpoint's tensor, naming the tensor and the checkpoint."""
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise MergeError(f"tensor {name} holds NaN or inf", where, "the checkpoint is broken; drop it from the merge")


def require_finite_output(tensor: torch.Tensor, name: str) -> None:
    """Refuse NaN/inf in a merged tensor: the inputs were finite (checked as they loaded), so the weights or
    lambda scaled it past float32's range."""
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise MergeError(f"merged tensor {name} holds NaN or inf: the weights or lambda scale the checkpoints past "
                         "float32's range (about 3.4e38)", MERGED_OUTPUT,
                         "give smaller weights or lambda (--weights / merge.weights, --lambda / merge.lambda)")
