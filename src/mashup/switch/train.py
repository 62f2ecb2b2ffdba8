"""`mashup switch train`: fine-tune the switcher (LoRA) on a collect's labels with the shared training loop.

Each labelled instance becomes an EncodedRequest whose continuations are the digit tokens and whose
answer is the label, so ``mashup.training.train`` puts the loss on the label digit only and its periodic
evaluation reports the held-out share of labels the switcher's argmax gets right.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from mashup.atomic_dir import require_free_output
from mashup.config import TrainConfig, load_config, save_config
from mashup.evaluation import ScoreSettings
from mashup.errors import MashupError
from mashup.io import atomic_output_dir, write_json
from mashup.library.identity import stored_base
from mashup.models import default_device, load_tokenizer, resolve_base_dir, resolve_precision
from mashup.switch.collect import ROLLOUTS, labelled_instances
from mashup.switch.candidates import recorded_candidates, with_full_ids
from mashup.switch.config import SWITCH_CONFIG, SwitchConfig, candidates_difference
from mashup.switch.generation import Segment
from mashup.switch.switcher import switcher_request
from mashup.training import ProgressFn, prepare_model, save_trained, total_steps, train
from mashup.verbs import write_curve
from mashup.provenance import write_version

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


def checked_collect_dirs(config: SwitchConfig, collect_dirs: list[str | Path]) -> list[Path]:
    """The collect dirs, each once (by resolved path), each a collect made with ``config``'s candidates."""
    found: dict[Path, Path] = {}
    for d in map(Path, collect_dirs):
        if not d.exists():
            raise MashupError("no such collect dir", str(d), "check the --data path")
        if not d.is_dir():
            raise MashupError("--data is not a dir", str(d), "give the --out dir of `mashup switch collect`")
        found.setdefault(d.resolve(), d)  # a dir given twice would put copies of held-out labels in training
    for d in found.values():
        _require_same_candidates(config, d)
    return list(found.values())


def _require_same_candidates(config: SwitchConfig, collect_dir: Path) -> None:
    recorded_path = collect_dir / SWITCH_CONFIG
    if not recorded_path.is_file():
        raise MashupError(f"not a collect dir (no {SWITCH_CONFIG})", str(collect_dir),
                          "give the --out dir of `mashup switch collect`")
    difference = candidates_difference(load_config(recorded_path, SwitchConfig).candidates,
                                       with_full_ids(config.candidates, config.library))
    if difference is not None:
        raise MashupError(f"the collect labelled other candidates than --config's ({difference})", str(collect_dir),
                          "train with the switch config the collect was made with, in the same order")


def _labels_below(n: int, collect_dir: Path) -> list[tuple[str, list[Segment], int]]:
    """The collect's labelled instances, each label naming one of the ``n`` candidates."""
    instances = labelled_instances(collect_dir)
    labels = {label for _, _, label in instances}
    if labels and not 0 <= min(labels) <= max(labels) < n:
        raise MashupError(f"labels {sorted(labels)} do not all name one of the {n} candidates",
                          str(collect_dir / ROLLOUTS), "restore the collect, or run it again into a new --out")
    return instances


@dataclass(frozen=True)
class SwitcherInputs:
    """A switcher training's checked inputs: the collects' labelled instances and the switcher's base."""

    instances: list[tuple[str, list[Segment], int]]
    base: str
    base_dir: Path


def check_switcher_inputs(config: SwitchConfig, collect_dirs: list[str | Path], out: str | Path, *,
                          overwrite: bool = False) -> SwitcherInputs:
    """Every check of a switcher training's input (collects, labels, base, output dir), before any work: a
    caller showing progress runs this first, so bad input is one error line, not a bar and then an error."""
    n = len(config.candidates)
    instances = [x for d in checked_collect_dirs(config, collect_dirs) for x in _labels_below(n, d)]
    if len(instances) < 2:
        raise MashupError(f"only {len(instances)} labelled instance(s) to train on", ", ".join(map(str, collect_dirs)),
                          "collect more instances (--instances) or more rollouts")
    require_free_output(Path(out), overwrite=overwrite)
    base = switcher_base(config)
    return SwitcherInputs(instances, base, resolve_base_dir(base))


def train_switcher(config: SwitchConfig, collect_dirs: list[str | Path], out: str | Path,
                   train_config: TrainConfig, *, held_out: float = HELD_OUT, progress: ProgressFn | None = None,
                   overwrite: bool = False) -> dict:
    """Train a LoRA switcher into ``out/adapter``; returns (and writes) the result with its curve."""
    inputs = check_switcher_inputs(config, collect_dirs, out, overwrite=overwrite)
    return train_checked(config, inputs, out, train_config, held_out=held_out, progress=progress,
                         overwrite=overwrite)


def _absolute(path: str | Path) -> Path:
    return Path(path).expanduser().absolute()


def recorded_config(config: SwitchConfig, base: str, out: str | Path) -> SwitchConfig:
    """The switch config written beside the adapter, read the same from any working dir (generate and eval check
    their candidates against it): the candidates, and the switcher's base as the library records a base and its
    adapter absolute."""
    adapter = str(_absolute(out) / "adapter")
    switcher = config.switcher.model_copy(update={"model": stored_base(base), "adapter": adapter})
    candidates = recorded_candidates(config.candidates, config.library, required=False)
    return config.model_copy(update={"candidates": candidates,
                                     "switcher": switcher})


def train_checked(config: SwitchConfig, inputs: SwitcherInputs, out: str | Path, train_config: TrainConfig, *,
                  held_out: float = HELD_OUT, progress: ProgressFn | None = None, overwrite: bool = False) -> dict:
    """:func:`train_switcher` on inputs :func:`check_switcher_inputs` has checked."""
    n, base, base_dir = len(config.candidates), inputs.base, inputs.base_dir
    tokenizer = load_tokenizer(base_dir)
    requests = [switcher_request(tokenizer, q, segments, n, label) for q, segments, label in inputs.instances]
    random.Random(train_config.seed).shuffle(requests)
    n_eval = max(1, round(held_out * len(requests)))
    train_requests, eval_requests = requests[n_eval:], requests[:n_eval]
    train_config = train_config.resolved(total_steps(len(train_requests), train_config))  # as written: as used
    device = default_device()
    bf16 = resolve_precision(config.precision, device) == "bf16"
    settings = ScoreSettings(batch_size=16, device=device, bf16=bf16, pad_id=int(tokenizer.pad_token_id))
    with atomic_output_dir(Path(out), overwrite=overwrite) as tmp:
        model = prepare_model(base_dir, train_config).to(device)
        result = train(model, train_requests, eval_requests, train_config, settings, progress)
        save_trained(model, tmp / "adapter", base, tokenizer)
        write_curve(result, tmp)
        save_config(train_config, tmp / "train_config.yaml")
        save_config(recorded_config(config, base, out), tmp / SWITCH_CONFIG)
        write_version(tmp)
        summary = {"out": str(_absolute(out)), "adapter": str(_absolute(out) / "adapter"), "base": stored_base(base),
                   "train_examples": len(train_requests), "held_out": len(eval_requests),
                   "labels": {i: sum(r.answer == i for r in requests) for i in range(n)}, **result.to_dict()}
        write_json(tmp / "result.json", summary)
    return summary
