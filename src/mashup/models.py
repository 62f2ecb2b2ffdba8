"""Base models, tokenizers, adapters and the numeric settings they run under."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mashup.errors import CheckpointError, MashupError
from mashup.io import load_weights, weight_files

logger = logging.getLogger(__name__)


def resolve_base_dir(base: str, cache_dir: Path | None = None) -> Path:
    """A local HF model dir for ``base``: a named model (converted once), a local dir, or a Hub id."""
    from mashup.named_models import NAMED_MODELS, materialize_named_model

    if base in NAMED_MODELS:
        return materialize_named_model(base, cache_dir)
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CheckpointError("no config.json in the base model dir", str(path), "pass an HF model dir")
        return path
    if path.suffix or base.startswith((".", "/", "~")) or base.count("/") != 1:
        raise MashupError(f"unknown base model '{base}'", None,
                          f"use a local model dir, a Hub id, or one of: {', '.join(sorted(NAMED_MODELS))}")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(base, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(model_dir: Path, *, allow_pickle: bool = False) -> PreTrainedModel:
    """Load a causal LM in float32 from safetensors (pickles only with ``allow_pickle``)."""
    weight_files(Path(model_dir), allow_pickle=allow_pickle)  # refuses pickles early, with a clear line
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, use_safetensors=not allow_pickle, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load model ({exc})".splitlines()[0], str(model_dir),
                              "check it is a complete HF model dir") from None
    return model


def attach_adapter(model: PreTrainedModel, adapter_dir: Path, *, trainable: bool,
                   adapter_name: str = "default") -> PeftModel:
    try:
        return PeftModel.from_pretrained(model, adapter_dir, adapter_name=adapter_name, is_trainable=trainable)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"cannot load LoRA adapter ({exc})".splitlines()[0], str(adapter_dir),
                              "check it was trained on this base model") from None


def load_full_weights_into(model: PreTrainedModel, model_dir: Path, *, allow_pickle: bool = False) -> None:
    """Swap a full fine-tune's weights into an already-built model of the same shapes."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(model_dir, allow_pickle=allow_pickle):
        state.update(load_weights(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not _is_tied(model, m)]
    if missing or unexpected:
        raise CheckpointError(f"weights do not fit the base (missing {missing[:2]}, unexpected {unexpected[:2]})",
                              str(model_dir), "register it against the right --base")


def _is_tied(model: PreTrainedModel, name: str) -> bool:
    return name == "lm_head.weight" and bool(getattr(model.config, "tie_word_embeddings", False))


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool) -> Iterator[None]:
    """bf16 autocast on the given device when enabled; a no-op otherwise."""
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled):
        yield


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
