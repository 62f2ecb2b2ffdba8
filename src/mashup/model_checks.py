"""What is wrong with a model or adapter dir, said in one line naming the file at fault, before (or after)
transformers and PEFT load it: a file given for its dir, a registered dir that is gone, a config.json that does
not parse or build a model or does not fit the saved weights, an adapter's tensors that are not the ones its
adapter_config.json makes."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mashup.errors import CheckpointError, LibraryError, short_reason
from mashup.io import check_finite, tensor_shapes, weight_files
from mashup.library.lora_config import ADAPTER_CONFIG
from mashup.library.records import MODEL_CONFIG
from mashup.weight_names import tied_weights, untied_what

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PretrainedConfig, PreTrainedModel

    from mashup.library import CheckpointRecord


def require_json(path: Path) -> None:
    """Refuse a config that is not JSON here: transformers says so through an OSError, which reads as a file
    system problem."""
    try:
        json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path.name} is not valid JSON ({exc})", str(path), "fix or re-save the file") from None


def raise_config_fault(model_dir: Path) -> None:
    """After a failed load: raise a CheckpointError naming config.json when it does not parse (a wrong-typed field).
    Return when it does: the failure was something else, for the caller to handle or let through."""
    if (Path(model_dir) / MODEL_CONFIG).is_file():
        with contextlib.suppress(OSError):  # the file system, not the config's values
            _parsed_config(model_dir)


def raise_load_fault(model_dir: Path, files: list[Path]) -> None:
    """After a failed model load: raise a CheckpointError where config.json is at fault, because it does not parse
    or build a model (built once, on the meta device) or makes other shapes than the saved weights (read from their
    safetensors headers, where transformers raised rather than list them). Return otherwise: the failure was
    something else, for the caller to handle or let through."""
    if not (Path(model_dir) / MODEL_CONFIG).is_file():
        return
    try:
        made = model_on_meta(model_dir)
    except OSError:  # the file system, not the config's values
        return
    made_shapes = {name: list(tensor.shape) for name, tensor in made.state_dict().items()}
    saved: dict[str, list[int]] = {}
    for path in files:
        if path.suffix == ".safetensors":
            saved.update(tensor_shapes(path))
    require_matching_sizes([(name, shape, made_shapes[name]) for name, shape in saved.items()
                            if name in made_shapes and made_shapes[name] != shape], model_dir)


def model_on_meta(model_dir: Path) -> PreTrainedModel:
    """The model config.json makes, built on the meta device (no memory, no weights read). A config that does not
    parse or build raises a CheckpointError naming it; an OSError (the file system) is left to the caller."""
    from transformers import AutoModelForCausalLM

    config = _parsed_config(model_dir)
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except OSError:
        raise
    except Exception as fault:
        raise _config_error(Path(model_dir) / MODEL_CONFIG, config, fault) from None


def _parsed_config(model_dir: Path) -> PretrainedConfig:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except OSError:
        raise
    except Exception as fault:
        raise _config_error(Path(model_dir) / MODEL_CONFIG, None, fault) from None


def _config_error(config_path: Path, config: PretrainedConfig | None, fault: Exception) -> CheckpointError:
    """Why config.json does not parse (``config`` None) or build a model, in one line: an architecture transformers
    does not know, one needing the model's own code, or else a field's type or value (transformers' reason, cut)."""
    import transformers

    fields = _fields(config_path)
    auto_map = fields.get("auto_map") if isinstance(fields.get("auto_map"), dict) else {}
    model_type = fields.get("model_type")
    known = isinstance(model_type, str) and model_type in transformers.CONFIG_MAPPING
    if _needs_own_code(auto_map, known, config):
        return CheckpointError(f"{MODEL_CONFIG} needs the model's own code (auto_map: {', '.join(sorted(auto_map))}"
                               "), and mashup does not run a model's own code (trust_remote_code)", str(config_path),
                               "use a base of an architecture transformers ships, or a conversion of this model to "
                               "one")
    if config is None and isinstance(model_type, str) and not known:
        return CheckpointError(f"architecture '{model_type}' (model_type) is not known to the installed "
                               f"transformers {transformers.__version__}", str(config_path),
                               "upgrade transformers (pip install -U transformers), or use a base of an "
                               "architecture it supports")
    if config is not None and not _is_causal_lm(config):
        return CheckpointError(f"model_type '{model_type}' is not a causal language model (transformers has no "
                               "AutoModelForCausalLM class for it)", str(config_path),
                               "use a decoder-only base (Llama, Gemma, Mistral, Qwen, SmolLM...)")
    cause = fault.__cause__ if isinstance(fault.__cause__, Exception) else fault  # a field's own problem
    reason = short_reason(f"{type(cause).__name__}: {cause}")
    return CheckpointError(f"invalid model config ({reason})", str(config_path),
                           f"fix that value, or copy {MODEL_CONFIG} from the model these weights came from")


def _is_causal_lm(config: PretrainedConfig) -> bool:
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    return type(config) in MODEL_FOR_CAUSAL_LM_MAPPING


def _needs_own_code(auto_map: dict[str, Any], known: bool, config: PretrainedConfig | None) -> bool:
    """The step that failed needs a class only the model's own code has: auto_map names one for it, and
    transformers has none of its own (its own classes are used where it has them, even with an auto_map)."""
    if config is None:
        return "AutoConfig" in auto_map and not known
    return "AutoModelForCausalLM" in auto_map and not _is_causal_lm(config)


def _fields(config_path: Path) -> dict[str, Any]:
    """config.json's fields, or none where it is no JSON object (transformers said what was wrong then)."""
    try:
        fields = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return {}
    return fields if isinstance(fields, dict) else {}


_ARCHITECTURE_FIX = f"fix {MODEL_CONFIG} to the architecture the weights were saved with, or re-save them"


def require_matching_sizes(mismatched: list[tuple[str, Any, Any]], model_dir: Path) -> None:
    """Refuse weights saved in other shapes than config.json makes (``mismatched``: (name, saved shape, made
    shape) for each, as transformers' loading info lists them)."""
    if mismatched:
        name, saved, made = sorted(mismatched, key=lambda item: item[0])[0]
        raise CheckpointError(f"weight {name} has shape {list(saved)} but {MODEL_CONFIG} makes it {list(made)} "
                              f"({len(mismatched)} such weight(s))", str(model_dir), _ARCHITECTURE_FIX)


def require_all_weights_used(unexpected: list[str], model_dir: Path) -> None:
    """Refuse saved weights the model config.json makes has no place for (fewer layers, say): transformers leaves
    them out with a note on stderr only, and a truncated model would load."""
    if unexpected:
        raise CheckpointError(f"{len(unexpected)} weight(s) in the checkpoint that {MODEL_CONFIG} has no place for "
                              f"(e.g. {sorted(unexpected)[0]}), which would be left out", str(model_dir),
                              _ARCHITECTURE_FIX)


def require_clean_load(model: PreTrainedModel, info: dict[str, Any], model_dir: Path) -> None:
    """Refuse what ``from_pretrained`` let through with a note on stderr at most (``info``: its loading info):
    weights of other shapes or with no place in the model, weights missing (which start at random), a saved head
    that config.json ties to the embeddings."""
    require_matching_sizes(info["mismatched_keys"], model_dir)  # some fail in the load: raise_load_fault
    require_all_weights_used(info["unexpected_keys"], model_dir)
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise CheckpointError(f"{len(missing)} weight(s) missing from the checkpoint (e.g. {missing[0]}), which "
                              "would start at random", str(model_dir), "re-save the model, or check it is this "
                              "architecture's checkpoint")
    require_tied_head(model, model_dir)


def require_tied_head(model: PreTrainedModel, model_dir: Path) -> None:
    """Refuse a checkpoint whose config.json ties weights (the output head to the embeddings) that its files hold
    with other values: transformers leaves the two untied then (its warning silenced with the rest), against the
    config that a later ``tie_weights()`` and our own checks go by. A tied checkpoint saved without its head, or with
    one equal to the embeddings, loads tied, so the parameters tell, and no tensor is read again."""
    for name, shared in tied_weights(model).items():
        if _parameter(model, name) is not _parameter(model, shared):
            raise CheckpointError(untied_what((name, shared), f"its {MODEL_CONFIG}"), str(model_dir),
                                  f"set tie_word_embeddings to false in {MODEL_CONFIG} to keep both, or re-save the "
                                  "model with them tied")


def _parameter(model: PreTrainedModel, name: str) -> torch.Tensor | None:
    try:
        return model.get_parameter(name)
    except AttributeError:  # a buffer, or a name the model no longer has
        return None


def _dir_holding(path: Path) -> str:
    """The fix for a file (a weight file, say) given where its checkpoint dir belongs."""
    if any((path.parent / name).is_file() for name in (ADAPTER_CONFIG, MODEL_CONFIG)):
        return f"pass the dir that holds it, {path.parent}"
    return "pass a PEFT adapter dir (with adapter_config.json) or an HF model dir (with config.json)"


def checked_weight_files(model_dir: Path, *, allow_pickle: bool = False, check_values: bool = False) -> list[Path]:
    """``weight_files``, which refuses pickles early with a clear line; with ``check_values`` every file is also
    checked readable and finite (``check_finite``: one read of each)."""
    if Path(model_dir).is_file():
        raise CheckpointError("a file, not a checkpoint dir", str(model_dir), _dir_holding(Path(model_dir)))
    if not Path(model_dir).is_dir():
        raise CheckpointError("checkpoint directory not found", str(model_dir), "pass a PEFT adapter or HF model dir")
    files = weight_files(Path(model_dir), allow_pickle=allow_pickle)
    if check_values:
        check_finite(files)
    return files


def require_adapter_dir(path: Path) -> None:
    """A LoRA adapter is a dir holding adapter_config.json: a file, or a dir without one (a full model's), is
    said as such rather than as an unreadable adapter_config.json."""
    if path.is_file():
        raise CheckpointError("a file, not a LoRA adapter dir (a dir holding adapter_config.json)", str(path),
                              _dir_holding(path))
    if path.is_dir() and not (path / ADAPTER_CONFIG).exists():
        full = f" (it holds a full model: {MODEL_CONFIG})" if (path / MODEL_CONFIG).is_file() else ""
        raise CheckpointError(f"no adapter_config.json: not a LoRA adapter dir{full}", str(path),
                              "pass the PEFT adapter dir that holds adapter_config.json")


def require_registered_dir(record: CheckpointRecord, library_dir: Path) -> None:
    """Refuse a library checkpoint whose dir is gone (deleted or moved since it was registered), saying so: the
    catalog still lists it, and re-adding its old path is no fix. Where freshness is checked (merge), only for a
    record it found stale, to pick this fix over "register it again"; a switch candidate is loaded unchecked."""
    if not Path(record.path).is_dir():
        raise LibraryError(f"checkpoint {record.id}'s dir {record.path} is missing (deleted or moved since it was "
                           "registered)", str(library_dir), "restore it there, or `mashup library add` it where it "
                           f"is now (its entry is kept), or `mashup library remove {record.id}`")


@contextlib.contextmanager
def quiet_bias_shard_warning() -> Iterator[None]:
    """Hide PEFT 0.21's warning, as it collects an adapter's state dict, that takes a lora_B bias (lora_bias, 1-D)
    for a factor DeepSpeed left sharded (registration and ``check_lora_dir`` check every factor's shape)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_BIAS_TAKEN_FOR_A_SHARD)
        yield


_BIAS_TAKEN_FOR_A_SHARD = (r"Adapter '.*': \d+ LoRA tensor\(s\) have invalid shape: [^ ]*\.lora_B\.bias:\(\d+,\)"
                           r"(, [^ ]*\.lora_B\.bias:\(\d+,\))*( \(\+\d+ more\))?\. ")


def require_matching_keys(model: PeftModel, adapter_name: str, found: set[str], adapter_dir: Path) -> None:
    """Refuse an adapter whose tensors are not the ones its adapter_config.json makes: PEFT loads the tensors
    that match, leaves the rest of the adapter at its init and drops the tensors no module takes."""
    from peft import get_peft_model_state_dict

    from mashup.library.base_shapes import adapted_modules, require_model_modules

    # PEFT renames the modules of one saved under another transformers version's names as it loads it (and loads
    # none of one saved from the inner model), while the library's slots and merges take them as written: refused
    # with how to re-save it, everywhere alike
    require_model_modules(adapted_modules(found), model.get_base_model(), str(adapter_dir))
    with quiet_bias_shard_warning():
        # save_embedding_layers=False: "auto" looks the base up on the Hub; embeddings are no LoRA factors anyway
        expected = set(get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False))
    missing = sorted(expected - found)
    unused = sorted(name for name in found - expected if "lora_" in name)
    if missing or unused:
        parts = [f"{len(missing)} tensors its target_modules need are missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unused)} tensors fit no target module (e.g. {unused[0]})"] if unused else []
        raise CheckpointError(f"adapter_config.json and the weights disagree: {'; '.join(parts)}", str(adapter_dir),
                              "fix target_modules in adapter_config.json or re-save the adapter")
