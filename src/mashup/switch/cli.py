"""`mashup switch ...`: a thin typer layer over mashup.switch's functions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mashup.cli_options import JsonOpt, PrecisionOpt, emit, err, given
from mashup.config import TrainConfig, load_config
from mashup.progress import started_on_first_use, task_on_first_update
from mashup.switch.config import (SYSTEMS, CollectConfig, RewardConfig, SwitchConfig, SwitchEvalConfig,
                                  default_switcher_training)

switch_app = typer.Typer(no_args_is_help=True, help="Switch Generation: checkpoints take turns writing a response "
                                                    "(arXiv 2510.09913).")

ConfigOpt = Annotated[Path, typer.Option("--config", help="switch config YAML: candidates, generation, switcher")]
OutOpt = Annotated[Path, typer.Option("--out", help="output dir")]
TaskOpt = Annotated[str, typer.Option("--task", help="gsm8k, arithmetic, a multiple-choice task, or a data file "
                                                     "(JSONL, CSV, ...)")]
SegmentOpt = Annotated[Optional[int], typer.Option("--segment-tokens", help="new tokens per segment",
                                                   show_default="from --config (50)")]
MaxNewOpt = Annotated[Optional[int], typer.Option("--max-new-tokens", help="response length cap",
                                                  show_default="from --config (200)")]
AdapterOpt = Annotated[Optional[str], typer.Option("--adapter", help="trained switcher adapter",
                                                   show_default="none: untrained switcher")]


# collect's and eval's reward options, declared once
RewardOpt = Annotated[str, typer.Option("--reward", help="number_match | number_closeness | choice_cloze | auto "
                                        "(number_match on open tasks, choice_cloze on multiple choice)")]
ModeOpt = Annotated[str, typer.Option("--reward-mode", help="choice_cloze reward: binary | margin")]


def _training_option(flag: str, help: str, field: str, unset: str = "none") -> Any:
    """A `switch train` option whose shown default is the switcher's own (``default_switcher_training``);
    ``unset``: what is shown where that leaves the field None."""
    value = getattr(default_switcher_training(), field)
    shown = unset if value is None else f"{value:g}" if isinstance(value, float) else str(value)
    return typer.Option(flag, help=help, show_default=shown)


def _config(path: Path, segment_tokens: int | None = None, max_new_tokens: int | None = None,
            adapter: str | None = None, precision: str | None = None) -> SwitchConfig:
    config = load_config(path, SwitchConfig)
    if precision:
        config = config.model_copy(update={"precision": precision})
    # 0 reaches validation and is refused there, not taken for "not given"
    updates = given(segment_tokens=segment_tokens, max_new_tokens=max_new_tokens)
    config = config.model_copy(update={"generation": config.generation.model_copy(update=updates)})
    if adapter:
        config = config.model_copy(update={"switcher": config.switcher.model_copy(update={"adapter": adapter})})
    return SwitchConfig.model_validate(config.model_dump())


def _emit(data: Any, as_json: bool, text: str) -> None:
    """``data`` as strict JSON with ``--json`` (as every verb writes it), else ``text`` as it is."""
    if as_json:
        emit(data, as_json)
    else:
        Console().print(text, markup=False, highlight=False, soft_wrap=True)  # "[name] ..." is text, not a style


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err)


@contextmanager
def _bars() -> Iterator[Callable[[str, int, int], None]]:
    """Yields ``update(name, done, total)``: one bar per name, shown from its first update, so that nothing is
    drawn before the verb's input checks have passed (a bad input is its error line alone)."""
    with started_on_first_use(_bar) as progress:
        bars: dict[str, Callable[..., None]] = {}

        def update(name: str, done: int, total: int) -> None:
            bars.setdefault(name, task_on_first_update(progress, name))(done, total)
        yield update


@switch_app.command("collect")
def collect_cmd(config: ConfigOpt, task: TaskOpt, out: OutOpt,
                instances: Annotated[int, typer.Option("--instances", help="train questions, one prefix each")] = 64,
                rollouts: Annotated[int, typer.Option("--rollouts", help="k completions per candidate")] = 2,
                seed: Annotated[int, typer.Option("--seed", help="seed of prefixes, cuts and rollouts")] = 0,
                reward: RewardOpt = "auto", reward_mode: ModeOpt = "binary", segment_tokens: SegmentOpt = None,
                max_new_tokens: MaxNewOpt = None, precision: PrecisionOpt = None, as_json: JsonOpt = False) -> None:
    """Label the best next writer from random-switch rollouts; re-run the same command to resume."""
    from mashup.switch.collect import collect

    collect_config = CollectConfig(task=task, instances=instances, rollouts=rollouts, seed=seed,
                                   reward=RewardConfig(name=reward, mode=reward_mode))  # type: ignore[arg-type]
    switch_config = _config(config, segment_tokens, max_new_tokens, precision=precision)
    with _bars() as update:
        summary = collect(switch_config, collect_config, out,
                          progress=lambda done, total: update(f"collect {task}", done, total))
    _emit(summary, as_json, f"{summary['labelled']} of {summary['instances']} instances labelled "
                            f"(dropped: {summary['dropped']}); labels {summary['labels']}; written to {out}")


@switch_app.command("train")
def train_cmd(config: ConfigOpt, data: Annotated[list[Path], typer.Option("--data", help="collect dir (repeat)")],
              out: OutOpt, lr: Annotated[Optional[float], _training_option("--lr", "peak learning rate", "lr")] = None,
              epochs: Annotated[Optional[float], _training_option(
                  "--epochs", "passes over the labels", "epochs")] = None,
              batch_size: Annotated[Optional[int], _training_option(
                  "--batch-size", "examples per optimizer step", "batch_size")] = None,
              max_steps: Annotated[Optional[int], _training_option(
                  "--max-steps", "optimizer steps (overrides --epochs)", "max_steps", "from --epochs")] = None,
              seed: Annotated[int, typer.Option("--seed", help="seed of the LoRA init and data order")] = 0,
              precision: PrecisionOpt = None, as_json: JsonOpt = False) -> None:
    """Fine-tune the switcher (LoRA, loss on the label digit) on collected labels."""
    from mashup.progress import training_bars
    from mashup.switch.train import check_switcher_inputs, train_checked

    chosen = given(lr=lr, epochs=epochs, batch_size=batch_size, max_steps=max_steps, seed=seed)
    train_config = TrainConfig(**{**default_switcher_training().model_dump(), **chosen})  # validated, unlike model_copy
    switch_config = _config(config, precision=precision)
    inputs = check_switcher_inputs(switch_config, list(data), out)  # bad input: its error alone, no empty bar
    with training_bars(err) as stage:
        summary = train_checked(switch_config, inputs, out, train_config, progress=stage("switcher"))
    curve = summary["curve"]
    _emit(summary, as_json, f"switcher trained into {summary['adapter']} on {summary['train_examples']} labels; "
                            f"held-out label accuracy {curve[0]['accuracy']:.3f} -> {curve[-1]['accuracy']:.3f}")


@switch_app.command("generate")
def generate_cmd(config: ConfigOpt, prompt: Annotated[str, typer.Argument(help="the prompt")],
                 adapter: AdapterOpt = None,
                 writer: Annotated[Optional[str], typer.Option("--writer", help="one candidate writes it all",
                                                               show_default="none: the switcher picks")] = None,
                 segment_tokens: SegmentOpt = None, max_new_tokens: MaxNewOpt = None, precision: PrecisionOpt = None,
                 as_json: JsonOpt = False) -> None:
    """A prompt in, the response out, with which candidate wrote each segment."""
    from mashup.switch.api import generate

    switch_config = _config(config, segment_tokens, max_new_tokens, adapter, precision)
    trace = generate(switch_config, prompt, writer=writer)
    names = [c.label() for c in switch_config.candidates]
    lines = [f"[{names[s.writer]}] {s.text!r}" for s in trace.segments]
    _emit(trace.to_dict(), as_json, trace.text + "\n\n" + "\n".join(lines))


@switch_app.command("eval")
def eval_cmd(config: ConfigOpt, task: TaskOpt, out: OutOpt,
             adapter: AdapterOpt = None,
             max_examples: Annotated[Optional[int], typer.Option(
                 "--max-examples", help="test questions (0: all)")] = 50,
             systems: Annotated[Optional[list[str]], typer.Option(
                 "--system", help=f"rows to run (repeat): alone:NAME (a candidate's name), {', '.join(SYSTEMS)}",
                 show_default="all")] = None,
             reward: RewardOpt = "auto", reward_mode: ModeOpt = "binary", segment_tokens: SegmentOpt = None,
             max_new_tokens: MaxNewOpt = None, precision: PrecisionOpt = None, as_json: JsonOpt = False) -> None:
    """Accuracy with 95% CIs: each candidate, random, untrained/trained switcher, router, logit average, merge."""
    from mashup.switch.api import evaluate_into
    from mashup.switch.report import markdown_table

    eval_config = SwitchEvalConfig(task=task, max_examples=max_examples or None, systems=systems or None,
                                   reward=RewardConfig(name=reward, mode=reward_mode))  # type: ignore[arg-type]
    switch_config = _config(config, segment_tokens, max_new_tokens, adapter, precision)
    with _bars() as update:
        result = evaluate_into(switch_config, eval_config, out, progress=update)
    _emit({k: v for k, v in result.items() if k != "traces"}, as_json, markdown_table(result))
