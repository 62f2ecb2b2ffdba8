"""`mashup switch train`: fine-tune the switcher (LoRA) on a collect's labels with the shared training loop.

Each labelled instance becomes an EncodedRequest whose continuations are the digit tokens and whose
answer is the label, so ``mashup.training.train`` puts the loss on the label digit only and its periodic
evaluation reports the held-out share of labels the switcher's argmax gets right.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from mashup.config import TrainConfig, save_config
from mashup.evaluation import ScoreSettings
from mashup.errors import MashupError
from mashup.io import atomic_output_dir, write_json
from mashup.models import default_device, load_tokenizer, resolve_base_dir, resolve_precision
from mashup.switch.collect import labelled_instances
from mashup.switch.config import SwitchConfig
from mashup.switch.switcher import switcher_request
from mashup.training import ProgressFn, prepare_model, save_trained, train
from mashup.verbs import write_curve
from mashup.workspace import write_version

logger = logging.getLogger(__name__)
HELD_OUT = 0.2


def switcher_base(config: SwitchConfig) -> str:
    """The switcher's LM: configured, else the aligned (else first) candidate's base model."""
    if config.switcher.model:
        return config.switcher.model
    candidate = config.candidates[config.aligned_index() or 0]
    if candidate.model is None:
        raise MashupError("the aligned candidate is a library checkpoint, so the switcher base is ambiguous", None,
                          "set switcher.model in the switch config")
    return candidate.model


def train_switcher(config: SwitchConfig, collect_dirs: list[str | Path], out: str | Path,
                   train_config: TrainConfig, *, held_out: float = HELD_OUT, progress: ProgressFn | None = None,
                   overwrite: bool = False) -> dict:
    """Train a LoRA switcher into ``out/adapter``; returns (and writes) the result with its curve."""
    instances = [x for d in collect_dirs for x in labelled_instances(d)]
    if len(instances) < 2:
        raise MashupError(f"only {len(instances)} labelled instance(s) to train on", ", ".join(map(str, collect_dirs)),
                          "collect more instances (--instances) or more rollouts")
    base = switcher_base(config)
    base_dir = resolve_base_dir(base)
    tokenizer = load_tokenizer(base_dir)
    n = len(config.candidates)
    requests = [switcher_request(tokenizer, q, segments, n, label) for q, segments, label in instances]
    random.Random(train_config.seed).shuffle(requests)
    n_eval = max(1, round(held_out * len(requests)))
    train_requests, eval_requests = requests[n_eval:], requests[:n_eval]
    device = default_device()
    bf16 = resolve_precision(config.precision, device) == "bf16"
    settings = ScoreSettings(batch_size=16, device=device, bf16=bf16, pad_id=int(tokenizer.pad_token_id))
    with atomic_output_dir(Path(out), overwrite=overwrite) as tmp:
        model = prepare_model(base_dir, train_config).to(device)
        result = train(model, train_requests, eval_requests, train_config, settings, progress)
        save_trained(model, tmp / "adapter", base, tokenizer)
        write_curve(result, tmp)
        save_config(train_config, tmp / "train_config.yaml")
        save_config(config.model_copy(update={"switcher": config.switcher.model_copy(
            update={"model": base, "adapter": str(Path(out) / "adapter")})}), tmp / "switch_config.yaml")
        write_version(tmp)
        summary = {"out": str(out), "adapter": str(Path(out) / "adapter"), "base": base,
                   "train_examples": len(train_requests), "held_out": len(eval_requests),
                   "labels": {i: sum(r.answer == i for r in requests) for i in range(n)}, **result.to_dict()}
        write_json(tmp / "result.json", summary)
    return summary
