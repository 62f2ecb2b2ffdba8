"""Tiny, deterministic, offline models and tokenizers for tests."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mashup.models import quiet_peft_deprecations

CORPUS = [
    "Answer the question below by choosing the correct choice.",
    "Question: Which is a colour? Choices: A: red B: dog C: run D: blue Answer: A",
    "Context: It rains. Question: What do you take? Answer: an umbrella",
    "The cat sat on the mat. The sun is hot. Water is wet. Ice is cold. Birds fly. Fish swim.",
    " A B C D E a b c d e 0 1 2 3 4 5 6 7 8 9",
] * 20


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a fixed corpus: any text encodes, no downloads."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def build_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, eos_token_id=0, pad_token_id=0, bos_token_id=None,
    )
    return LlamaForCausalLM(config)


def save_tiny_base(out_dir: Path, seed: int = 0) -> Path:
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def save_tiny_lora(base_dir: Path, out_dir: Path, seed: int, base_name: str | None = None, r: int = 4,
                   targets: tuple[str, ...] = ("q_proj", "v_proj", "up_proj")) -> Path:
    """A LoRA adapter with random (non-zero) A and B, as if trained."""
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False,
                        task_type="CAUSAL_LM")
    with quiet_peft_deprecations():
        peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = base_name or str(base_dir)
    peft_model.save_pretrained(out_dir, save_embedding_layers=False)  # "auto" looks base_name up on the Hub
    return out_dir


def save_tiny_full(base_dir: Path, out_dir: Path, seed: int, scale: float = 0.05) -> Path:
    """A 'full fine-tune': the base weights plus seeded noise."""
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    model.save_pretrained(out_dir)
    return out_dir


def save_fresh_init(base_dir: Path, path: Path, seed: int, r: int = 4,
                    targets: tuple[str, ...] = ("q_proj", "v_proj", "up_proj")) -> str:
    """The starting weights PEFT gives a new LoRA: random A, zero B (what training records as init)."""
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets)))
    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()},
              str(path))
    return str(path)


def copy_with_nan(model_dir: Path, out_dir: Path) -> Path:
    """A copy of a model or adapter dir whose first tensor (by name) holds one NaN."""
    import shutil

    from safetensors.torch import load_file

    copy = Path(shutil.copytree(model_dir, out_dir))
    weights = next(copy.glob("*.safetensors"))
    tensors = load_file(weights)
    tensors[min(tensors)].view(-1)[0] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    return copy
