"""Shared helpers for the merging tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from mashup.library.records import CheckpointRecord, inspect_checkpoint
from mashup.models import quiet_peft_deprecations
from tests.tiny import CORPUS


def records(paths: list[Path], base: Path | None = None) -> list[CheckpointRecord]:
    out = []
    for i, path in enumerate(paths):
        record = inspect_checkpoint(path, base=str(base) if base else None)
        record.id = f"ckpt{i}"
        out.append(record)
    return out


def calibration_batches(base: Path, n: int = 4) -> list[dict[str, torch.Tensor]]:
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoded = tokenizer(CORPUS[:n], padding=True, return_tensors="pt")
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    return [{"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}]


def sample_inputs(base: Path) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(base)
    return dict(tokenizer(["Question: Which is a colour?", "The cat sat"], padding=True, return_tensors="pt"))


@torch.no_grad()
def logits_of(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    return model(**inputs).logits


@torch.no_grad()
def adapter_logits(base: Path, adapter: Path, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    return logits_of(model, inputs)


@torch.no_grad()
def logits_with_deltas(base: Path, deltas: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the base with ΔW added by hand to the named weights."""
    model = AutoModelForCausalLM.from_pretrained(base)
    params = dict(model.named_parameters())
    for name, delta in deltas.items():
        params[name].add_(delta.to(params[name].dtype))
    return logits_of(model, inputs)


def adapter_deltas(path: Path) -> dict[str, torch.Tensor]:
    """Module prefix → s·B·A in float64, with s from the adapter's own adapter_config.json."""
    config = json.loads((path / "adapter_config.json").read_text())
    r = config["r"]
    scale = config["lora_alpha"] / (r**0.5 if config.get("use_rslora") else r)
    tensors = load_file(path / "adapter_model.safetensors")
    return {name.split(".lora_A.")[0]: scale * (tensors[name.replace(".lora_A.", ".lora_B.")].double()
                                                @ tensors[name].double())
            for name in tensors if ".lora_A." in name}


def copy_adapter(source: Path, target: Path, **config_updates: object) -> Path:
    """A copy of an adapter dir with some adapter_config.json fields changed (e.g. lora_alpha, use_rslora)."""
    shutil.copytree(source, target)
    config = json.loads((target / "adapter_config.json").read_text())
    config.update(config_updates)
    (target / "adapter_config.json").write_text(json.dumps(config))
    return target


def zero_b_init(adapter: Path, out: Path, seed: int) -> Path:
    """An init file like PEFT's default: random lora_A, lora_B = 0 (so ΔW₀ = 0), same names as ``adapter``."""
    generator = torch.Generator().manual_seed(seed)
    tensors = load_file(adapter / "adapter_model.safetensors")
    init = {n: torch.zeros_like(t) if ".lora_B." in n else torch.randn(t.shape, generator=generator)
            for n, t in tensors.items()}
    save_file(init, str(out))
    return out


def save_bias_lora(base: Path, out: Path, seed: int, lora_alpha: int = 8,
                   targets: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    """An r=4 adapter with PEFT's lora_bias (lora_B.bias tensors), A, B and the biases random as if trained."""
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=lora_alpha, target_modules=list(targets), lora_bias=True,
                        init_lora_weights=False, task_type="CAUSAL_LM")
    with quiet_peft_deprecations():
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name and name.endswith(".bias"):
                param.normal_(0.0, 0.5)
    model.peft_config["default"].base_model_name_or_path = str(base)
    model.save_pretrained(out, save_embedding_layers=False)
    return out
