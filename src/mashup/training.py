"""One training loop for LoRA and full fine-tuning, with periodic held-out evaluation."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from mashup.batching import answer_losses, collate
from mashup.config import TrainConfig
from mashup.config_files import validate_config
from mashup.data.prompts import EncodedRequest
from mashup.errors import CheckpointError, TrainingError
from mashup.evaluation import EvalResult, ScoreSettings, evaluate
from mashup.library.lora_config import ADAPTER_CONFIG, lora_settings
from mashup.library.records import MODEL_CONFIG, read_json_object
from mashup.model_checks import quiet_bias_shard_warning
from mashup.models import attach_adapter, autocast, load_model, quiet_peft_deprecations
from mashup.score_batches import answer_sequence

logger = logging.getLogger(__name__)
ProgressFn = Callable[[int, int, float], None]
INIT_WEIGHTS = "adapter_init.safetensors"


@dataclass
class CurvePoint:
    step: int
    accuracy: float
    loss: float
    train_loss: float | None
    seconds: float  # training time so far, evaluation excluded


@dataclass
class TrainResult:
    total_steps: int
    train_seconds: float
    eval_seconds: float
    curve: list[CurvePoint] = field(default_factory=list)

    @property
    def final(self) -> CurvePoint:
        return self.curve[-1]

    def to_dict(self) -> dict:
        return {"total_steps": self.total_steps, "train_seconds": self.train_seconds,
                "eval_seconds": self.eval_seconds, "curve": [asdict(p) for p in self.curve]}


def prepare_model(base_dir: Path, config: TrainConfig, init: Path | None = None,
                  allow_pickle: bool = False) -> nn.Module:
    """The model to train: a fresh or given LoRA on the base, or a full model (the base or ``init``). Weights
    holding NaN or inf are refused here: training would stop at its first step, blaming the learning rate."""
    if config.mode == "full":
        model = load_model(init or base_dir, allow_pickle=allow_pickle)
        model.requires_grad_(True)
        return model
    model = load_model(base_dir, allow_pickle=allow_pickle)
    if init is not None:
        return attach_adapter(model, init, trainable=True, allow_pickle=allow_pickle)
    from peft import LoraConfig, get_peft_model  # where a model is trained: see mashup.models on import time

    torch.manual_seed(config.seed)  # the fresh adapter's init is reproducible from the seed
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), use_rslora=config.use_rslora, task_type="CAUSAL_LM")
    with quiet_peft_deprecations():
        return get_peft_model(model, lora)


def init_lora_shape(init: Path) -> dict[str, Any] | None:
    """The LoRA shape (TrainConfig field names) of an init adapter dir; None for a full model dir."""
    config_path = Path(init) / ADAPTER_CONFIG
    if not config_path.exists():
        return None
    config = read_json_object(config_path)
    settings = lora_settings(config, str(config_path))  # the library's reading: the same defaults and checks
    try:
        dropout = float(config.get("lora_dropout") or 0.0)
    except (TypeError, ValueError):
        raise CheckpointError(f"{ADAPTER_CONFIG} field 'lora_dropout' is not a number", str(config_path),
                              "fix or re-save the file") from None
    return {"lora_r": settings["lora_r"], "lora_alpha": settings["lora_alpha"],
            "target_modules": settings["target_modules"], "lora_dropout": dropout,
            "use_rslora": settings["use_rslora"]}


def check_init_kind(mode: str, init: Path) -> None:
    """Refuse an init of the other kind before anything loads: transformers loads an adapter dir as the base
    with the adapter in it, and a full fine-tune of that failed only when it was saved."""
    is_adapter = (Path(init) / ADAPTER_CONFIG).exists()
    if mode == "full" and is_adapter:
        raise CheckpointError("a LoRA adapter dir cannot start a full fine-tune (--mode full)", str(init),
                              "train it with --mode lora, or pass a full HF model dir (the adapter merged into "
                              "its base)")
    if mode == "lora" and not is_adapter and (Path(init) / MODEL_CONFIG).exists():
        raise CheckpointError("a full model dir cannot start a LoRA run (--mode lora)", str(init),
                              "train it with --mode full, or pass a PEFT adapter dir")


def resolve_train_config(config: TrainConfig, init: Path | None) -> TrainConfig:
    """The config a LoRA run really trains with: starting from an adapter fixes its shape (r, alpha, ...)."""
    if init is not None:
        check_init_kind(config.mode, init)
    shape = init_lora_shape(init) if init is not None and config.mode == "lora" else None
    if shape is None:
        return config
    # validated, not model_copy: the adapter's config is outside input, like any other
    return validate_config({**config.model_dump(), **shape}, TrainConfig, Path(init) / ADAPTER_CONFIG)


def total_steps(n_train: int, config: TrainConfig) -> int:
    if config.max_steps is not None:
        return config.max_steps
    return max(1, math.ceil(config.epochs * math.ceil(n_train / config.batch_size)))


def _batch_indices(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Shuffled batches epoch after epoch (a fresh order each epoch, fixed by the seed)."""
    rng = random.Random(seed)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        yield from (order[i:i + batch_size] for i in range(0, n, batch_size))


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)  # no decay on biases and norms, as HF
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.resolved_lr())


def _train_step(model: nn.Module, requests: Sequence[EncodedRequest], ids: list[int], config: TrainConfig,
                settings: ScoreSettings) -> float:
    """Forward/backward over micro-batches of one batch; returns the batch's mean answer loss."""
    micro = config.micro_batch_size or config.batch_size
    total = 0.0
    for start in range(0, len(ids), micro):
        seqs = [answer_sequence(requests[i]) for i in ids[start:start + micro]]
        with autocast(settings.device, settings.bf16):
            per_example = answer_losses(model, collate(seqs, settings.pad_id, settings.device))
        loss = per_example.sum() / len(ids)
        loss.backward()
        total += loss.item()
    return total


def train(model: nn.Module, train_requests: Sequence[EncodedRequest], eval_requests: Sequence[EncodedRequest],
          config: TrainConfig, settings: ScoreSettings, progress: ProgressFn | None = None,
          initial: EvalResult | None = None) -> TrainResult:
    """AdamW + cosine with warmup; evaluates at step 0, every ``eval_every`` steps and at the end. The lr and
    eval_every it trains with are ``config.resolved(steps)``'s, which is what the writers record.

    ``initial`` is the step-0 evaluation when the caller already has it (the same init evaluated on
    the same requests), which saves one evaluation per arm.
    """
    from transformers import get_cosine_schedule_with_warmup

    steps = total_steps(len(train_requests), config)
    config = config.resolved(steps)  # idempotent: a caller that resolved it first records what runs
    optimizer = _optimizer(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.warmup_ratio * steps), steps)
    batches = _batch_indices(len(train_requests), config.batch_size, config.seed)
    result = TrainResult(total_steps=steps, train_seconds=0.0, eval_seconds=0.0)
    if progress:
        progress(0, steps, math.nan)
    if eval_requests:  # an empty eval set trains without a curve (e.g. a library's source adapters)
        _record(model, eval_requests, settings, result, 0, None, initial)
    torch.manual_seed(config.seed)
    for step in range(1, steps + 1):
        model.train()
        start = time.perf_counter()
        train_loss = _train_step(model, train_requests, next(batches), config, settings)
        _require_finite(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm), step, settings)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.train_seconds += time.perf_counter() - start
        if progress:
            progress(step, steps, train_loss)
        if eval_requests and (step % config.eval_every == 0 or step == steps):
            _record(model, eval_requests, settings, result, step, train_loss)
    return result


def _require_finite(grad_norm: torch.Tensor, step: int, settings: ScoreSettings) -> None:
    """Stop before a NaN or inf gradient reaches the weights (clipping would turn inf into NaN updates)."""
    if not torch.isfinite(grad_norm):
        raise TrainingError(f"training diverged at step {step}: the gradient norm is {grad_norm.item()} "
                            f"({settings.precision})",
                            None, "lower the learning rate" + (", or train in fp32 (--precision fp32)"
                                                              if settings.bf16 else ""))


def _record(model: nn.Module, requests: Sequence[EncodedRequest], settings: ScoreSettings, result: TrainResult,
            step: int, train_loss: float | None, scores: EvalResult | None = None) -> None:
    scores = scores or evaluate(model, requests, settings)
    result.eval_seconds += scores.seconds
    result.curve.append(CurvePoint(step, scores.accuracy, scores.loss, train_loss, result.train_seconds))
    logger.info("step %d: accuracy %.4f loss %.4f", step, scores.accuracy, scores.loss)


def save_init_adapter(model: nn.Module, path: Path) -> None:
    """Save a LoRA's starting weights: the reference its task vector is measured from."""
    from peft import PeftModel, get_peft_model_state_dict

    if isinstance(model, PeftModel):
        # save_embedding_layers=False: we never train embeddings, and "auto" looks the base up on the Hub
        with quiet_bias_shard_warning():
            state = get_peft_model_state_dict(model, save_embedding_layers=False)
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))


def save_trained(model: nn.Module, out_dir: Path, base: str, tokenizer=None) -> Path:
    """Write a PEFT adapter dir (LoRA) or an HF model dir (full) and return it; an adapter names its ``base`` as the
    library records one (a local dir absolute: PEFT and ``library add`` read it from any working dir)."""
    from peft import PeftModel
    from transformers import PreTrainedModel

    from mashup.library.identity import stored_base

    if isinstance(model, PeftModel):
        model.peft_config["default"].base_model_name_or_path = stored_base(base)
        with quiet_bias_shard_warning():
            model.save_pretrained(out_dir, save_embedding_layers=False)  # "auto" would look the base up on the Hub
        return out_dir
    assert isinstance(model, PreTrainedModel)
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir
