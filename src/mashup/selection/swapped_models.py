"""The scoring engine's models for the records its slots cannot hold, each swapped into one reused model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from mashup.library.records import CheckpointRecord
from mashup.models import attach_adapter, load_full_weights_into


class SwappedModels:
    """One model for full fine-tunes and one PEFT model for other adapters, each loaded once from the base."""

    def __init__(self, load_base: Callable[[], nn.Module], allow_pickle: bool = False) -> None:
        self._load_base = load_base
        self.allow_pickle = allow_pickle
        self._full_model: nn.Module | None = None
        self._peft_model: nn.Module | None = None

    def full(self, record: CheckpointRecord) -> nn.Module:
        """A full fine-tune's weights swapped into one reused model object."""
        if self._full_model is None:
            self._full_model = self._load_base()
        load_full_weights_into(self._full_model, Path(record.path), allow_pickle=self.allow_pickle)
        return self._full_model

    def peft(self, record: CheckpointRecord) -> nn.Module:
        """Adapters the slots cannot hold (other layouts, DoRA-like features) go through PEFT's own modules."""
        from peft import PeftModel

        name = f"ckpt_{record.id}"
        if self._peft_model is None:
            # unchecked, as the slots read them: registration checked the values and freshness vouches for them
            self._peft_model = attach_adapter(self._load_base(), Path(record.path), trainable=False, adapter_name=name,
                                              allow_pickle=self.allow_pickle, check_values=False)
        elif self._peft_model.active_adapter != name:  # the same adapter again (a later halving round) stays
            model = self._peft_model
            previous = model.active_adapter
            model.load_adapter(record.path, adapter_name=name, is_trainable=False)
            model.set_adapter(name)
            model.delete_adapter(previous)
        assert isinstance(self._peft_model, PeftModel)
        return self._peft_model.eval()
