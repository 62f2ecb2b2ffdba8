"""Base models, tokenizers, adapters and the numeric settings they run under."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError

from mashup.config import Precision
from mashup.errors import CheckpointError, MashupError
from mashup.hub import check_hub_weights, fetch_hub_model, is_hub_id
from mashup.io import load_weight_dir, loaded_weight_files, require_finite_tensors, tensor_shapes, weight_files
from mashup.library.records import MODEL_CONFIG
from mashup.model_checks import (
    checked_weight_files,
    raise_config_fault,
    raise_load_fault,
    require_adapter_dir,
    require_clean_load,
    require_json,
    require_matching_keys,
)
from mashup.weight_names import tied_weights, untied_copy, untied_what

# transformers' modeling code and peft are imported where a model is loaded: on a 2-core CPU they add
# about 4 s to every command, and a cached select or a library listing loads no model
if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def resolve_base_dir(base: str, cache_dir: Path | None = None) -> Path:
    """A local HF model dir for ``base``: a named model (converted once), a local dir, or a Hub id."""
    from mashup.named_models import NAMED_MODELS, materialize_named_model

    if base in NAMED_MODELS:
        return materialize_named_model(base, cache_dir)
    return _local_or_hub_dir(base, fetch_weights=True)


def check_base_available(base: str) -> None:
    """``resolve_base_dir``'s checks without its work (a named model is not converted, of a Hub model only
    config.json is fetched and its file list read), and of a local dir the library's rule too (config.json a JSON
    object, beside weight files), so that a base a load would refuse is refused here, before anything is written;
    one line on what is wrong otherwise."""
    from mashup.library.identity import check_base_dir
    from mashup.named_models import NAMED_MODELS

    if base in NAMED_MODELS:
        return
    # unlike check_base_dir (registration, offline), a Hub id is looked up here: its config.json is fetched
    fetched = _local_or_hub_dir(base, fetch_weights=False)
    path = Path(base).expanduser()
    if not path.is_dir():  # a Hub id: _local_or_hub_dir refused any other name
        check_hub_weights(base, fetched)
        return
    try:
        check_base_dir(base)
    except CheckpointError as exc:  # its fix is worded for `library add --base`
        raise CheckpointError(exc.what, exc.where, "point base at an HF model dir (config.json beside its "
                              "weight files), a named model or a Hub id") from None
    try:
        weight_files(path)  # the loader's rule: check_base_dir takes pickles, and a run here has no --allow-pickle
    except CheckpointError as exc:  # its fix offers --allow-pickle
        raise CheckpointError(exc.what, str(path.absolute()), "convert them to safetensors (load the model and "
                              "save_pretrained it again: transformers writes safetensors) and point base at that "
                              "dir") from None
    loaded_weight_files(path)  # weights transformers would not load (shards without their index): its line


def _local_or_hub_dir(base: str, *, fetch_weights: bool) -> Path:
    from mashup.named_models import NAMED_MODELS

    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / MODEL_CONFIG).exists():
            raise CheckpointError(f"no {MODEL_CONFIG} in the base model dir", str(path), "pass an HF model dir")
        require_json(path / MODEL_CONFIG)
        return path
    if not is_hub_id(base):
        raise MashupError(f"unknown base model '{base}': not a named model of this install, a local model dir or "
                          "a Hub id", None, f"use one of the named models ({', '.join(sorted(NAMED_MODELS))}), a "
                          "local HF model dir or a Hub id (or install the mashup version that ships this name)")
    return fetch_hub_model(base, config_only=not fetch_weights)


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    except Exception as exc:  # it parses config.json first: a bad field there is the config's fault
        raise_config_fault(model_dir)
        if not isinstance(exc, (OSError, ValueError)):
            raise
        reason = str(exc).splitlines()[0].rstrip(" :")
        raise CheckpointError(f"cannot load the tokenizer ({reason})", str(model_dir),
                              "the model dir needs its tokenizer files (tokenizer.json, tokenizer_config.json); "
                              "copy them from the model it was saved from") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(model_dir: Path, *, allow_pickle: bool = False, check_values: bool = True,
               dtype: torch.dtype | str = torch.float32) -> PreTrainedModel:
    """Load a causal LM in float32 (or ``dtype``: "auto" keeps the checkpoint's) from safetensors (pickles only with
    ``allow_pickle``), refusing weights holding NaN or inf unless ``check_values`` is off; a config.json that does
    not parse or build a model is named."""
    from transformers import AutoModelForCausalLM

    checked_weight_files(model_dir, allow_pickle=allow_pickle)
    if not (Path(model_dir) / MODEL_CONFIG).is_file():  # else transformers blames a model_type missing from it
        raise CheckpointError(f"no {MODEL_CONFIG}", str(model_dir),
                              f"pass a complete HF model dir ({MODEL_CONFIG} beside its weights)")
    # the files it loads, as registration and a base's identity take them; one line where it would load none
    files = loaded_weight_files(Path(model_dir), allow_pickle=allow_pickle)
    if check_values:  # a corrupt file named from its header; the values checked once loaded, not read twice
        for path in files:
            tensor_shapes(path)
    try:
        # None: safetensors where there are any, else the pickles weight_files allowed
        model, info = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, use_safetensors=None if allow_pickle else True, trust_remote_code=False,
            output_loading_info=True, ignore_mismatched_sizes=True,  # refused below in one line, not a traceback
        )
    except Exception as exc:  # a config that does not parse or build a model is named; a bug is not hidden
        raise_load_fault(model_dir, files)
        if not isinstance(exc, (OSError, ValueError, SafetensorError)):
            raise
        raise CheckpointError(f"cannot load model ({exc})".splitlines()[0], str(model_dir),
                              "check it is a complete HF model dir") from None
    require_clean_load(model, info, model_dir)
    if check_values:
        require_finite_tensors(model.named_parameters(), model_dir)
    return model


@contextlib.contextmanager
def quiet_peft_deprecations() -> Iterator[None]:
    """Hide the FutureWarning PEFT 0.21 triggers by reading transformers 5's ``is_gradient_checkpointing``.

    It is raised inside PEFT on every wrap, and nothing a user of ours can change removes it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def attach_adapter(model: PreTrainedModel, adapter_dir: Path, *, trainable: bool, adapter_name: str = "default",
                   allow_pickle: bool = False, check_values: bool = True) -> PeftModel:
    """``model`` with the adapter in ``adapter_dir``: from safetensors (pickles only with ``allow_pickle``), every
    tensor used; weights holding NaN or inf are refused unless ``check_values`` is off."""
    from peft import PeftModel

    from mashup.library.records import check_lora_dir

    require_adapter_dir(Path(adapter_dir))
    checked_weight_files(adapter_dir, allow_pickle=allow_pickle, check_values=check_values)
    shapes = check_lora_dir(Path(adapter_dir), allow_pickle)  # one line, where PEFT gave a traceback
    try:
        with quiet_peft_deprecations(), warnings.catch_warnings():
            # the keys it names are refused below, with the tensors nothing loaded (which it does not name)
            warnings.filterwarnings("ignore", message=".*Found missing adapter keys", category=UserWarning)
            # true of a bias-less base layer (PEFT's merge_and_unload then raises, saying so), but eval, train and
            # select never merge (the forward adds the lora_B bias), and merged_adapter gives it a zero bias first
            warnings.filterwarnings("ignore", message="`lora_bias=True` was passed but the targeted layer")
            peft_model = PeftModel.from_pretrained(model, adapter_dir, adapter_name=adapter_name,
                                                   is_trainable=trainable)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        raise CheckpointError(f"cannot load LoRA adapter ({exc})".splitlines()[0], str(adapter_dir),
                              "check it was trained on this base model") from None
    require_matching_keys(peft_model, adapter_name, set(shapes), adapter_dir)
    return peft_model


def merged_adapter(model: PreTrainedModel, adapter_dir: Path) -> PreTrainedModel:
    """``model`` with the adapter in ``adapter_dir`` merged into its weights (``attach_adapter``, then PEFT's
    ``merge_and_unload``). A lora_B bias (``lora_bias``) on a layer without a bias, which PEFT refuses to merge,
    gets a zero bias to fold into first: the merged layer computes what the adapter does."""
    adapted = attach_adapter(model, adapter_dir, trainable=False)
    for module in adapted.modules():
        if any(getattr(module, "lora_bias", {}).values()):
            layer = module.get_base_layer()
            if getattr(layer, "bias", None) is None:
                layer.bias = torch.nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype,
                                                            device=layer.weight.device), requires_grad=False)
    return adapted.merge_and_unload()


def load_full_weights_into(model: PreTrainedModel, model_dir: Path, *, allow_pickle: bool = False) -> None:
    """Swap a full fine-tune's weights into an already-built model of the same shapes. Weights the base ties are one
    parameter: a checkpoint holding other values in each is refused (the last one loaded would win)."""
    state = load_weight_dir(model_dir, allow_pickle=allow_pickle)
    if not state.keys() <= model.state_dict().keys():
        # saved under other names than the model's own: transformers 5 renames or fuses some architectures' weights
        # on load (Gemma-3's multimodal model, MoE experts), so it loads them (in their own dtype, as read here)
        del state
        state = load_model(model_dir, allow_pickle=allow_pickle, check_values=False, dtype="auto").state_dict()
    tied = tied_weights(model)
    pair = untied_copy(tied, state, state.__getitem__)
    if pair:
        raise CheckpointError(untied_what(pair, "the base"), str(model_dir), "register it against a base with an "
                              "untied head, or re-save it with its head tied")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m not in tied]
    if missing or unexpected:
        raise CheckpointError(f"weights do not fit the base (missing {missing[:2]}, unexpected {unexpected[:2]})",
                              str(model_dir), "register it against the right --base")


PRECISION_ENV = "MASHUP_PRECISION"
PRECISIONS = ("auto", "fp32", "bf16")


def bf16_supported(device: torch.device) -> bool:
    """True where bf16 matmuls are fast: CUDA with bf16, or a CPU with AMX or AVX512-BF16 units."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: Precision | str | None, device: torch.device) -> str:
    """``fp32`` or ``bf16``: the argument, else ``$MASHUP_PRECISION``, else ``auto`` (bf16 where it is fast)."""
    requested = precision or os.environ.get(PRECISION_ENV) or "auto"
    if requested not in PRECISIONS:
        source = "--precision" if precision else f"${PRECISION_ENV}"
        raise MashupError(f"unknown precision '{requested}'", source, f"use one of: {', '.join(PRECISIONS)}")
    if requested == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if requested == "bf16" and not bf16_supported(device):
        _warn_emulated_bf16(device.type)
    return requested


@functools.cache
def _warn_emulated_bf16(device_type: str) -> None:
    logger.warning("bf16 requested but this %s has no fast bf16 units: torch emulates it, which is correct but "
                   "far slower than fp32", device_type.upper())


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool) -> Iterator[None]:
    """bf16 autocast on the given device when enabled; a no-op otherwise.

    On CUDA it also keeps attention off cuDNN's kernel (see ``attention_backends``).
    """
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled), \
            attention_backends(device, enabled):
        yield


def attention_backends(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """SDPA without the cuDNN backend for bf16 on CUDA; nothing changes elsewhere.

    With an explicit (padding) mask and a sequence length of 64 mod 128, cuDNN's backward returns NaN
    query gradients on H100/H200 since torch 2.11 (pytorch/pytorch#196678): on an H200 it trained one
    LoRA adapter of a short-budget build to NaN. The memory-efficient kernel computes the same attention.
    """
    if device.type != "cuda" or not bf16:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
