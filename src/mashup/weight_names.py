"""Which weights a model ties (its output head to its embeddings), the names its files hold its weights under
(transformers 5 builds some architectures under other names than it saves them), and a stored copy of a tied
weight that differs from the weight it is tied to."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def tied_weights(model: PreTrainedModel) -> dict[str, str]:
    """The weights transformers ties as the model's config asks, each name → the weight it shares (for a causal LM
    that ties: the output head → the input embeddings; none where the config unties them)."""
    return dict(model.get_expanded_tied_weights_keys(all_submodels=True))


def saved_tied_weights(model: PreTrainedModel) -> dict[str, str]:
    """``tied_weights`` under the names their files hold them by (``saved_names``)."""
    tied = tied_weights(model)
    saved = saved_names(model, {name for pair in tied.items() for name in pair})
    return {saved[name]: saved[shared] for name, shared in tied.items()}


def saved_names(model: PreTrainedModel, names: Collection[str]) -> dict[str, str]:
    """Each of the model's weight ``names`` → the name ``save_pretrained`` writes it under. transformers 5 builds
    some architectures under other names than their checkpoints use and renames on load and save (Gemma-3's
    multimodal model is ``model.language_model.*`` built, ``language_model.model.*`` saved); a weight a conversion
    splits or fuses (MoE experts) keeps its own name here."""
    from transformers.core_model_loading import revert_weight_conversion

    state = model.state_dict()
    # stand-ins of each weight's shape, to follow each one's renaming by identity
    tensors = {name: torch.empty(state[name].shape, device="meta") for name in names}
    renamed = {id(tensor): saved for saved, tensor in revert_weight_conversion(model, dict(tensors)).items()}
    return {name: renamed.get(id(tensor), name) for name, tensor in tensors.items()}


def untied_what(pair: tuple[str, str], tied_by: str) -> str:
    """One wording for a stored weight that differs from the one ``tied_by`` (a config) ties it to."""
    return f"its {pair[0]} differs from {pair[1]}, which {tied_by} ties it to (tie_word_embeddings)"


def untied_copy(tied: dict[str, str], names: Collection[str], read: Callable[[str], torch.Tensor]
                ) -> tuple[str, str] | None:
    """The first pair of ``tied`` weights a checkpoint stores both of (``names``, read by ``read``) with other
    values; NaN counts as equal to NaN, for the finite check to name."""
    for name, shared in tied.items():
        if name in names and shared in names:
            a, b = read(name), read(shared)
            if a.shape != b.shape or not bool((a == b).logical_or_(a.isnan() & b.isnan()).all()):
                return name, shared
    return None
