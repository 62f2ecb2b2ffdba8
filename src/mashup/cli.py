"""The `mashup` command line: a thin layer over the typed functions in mashup.verbs and mashup.run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from mashup.cli_catalog import library_app, models_app, tasks_app
from mashup.cli_data import DataOptions, with_data_options
from mashup.cli_options import (DENSITY_DEFAULT, DENSITY_HELP, BaseOpt, ExecutorOpt, HalvingFactorOpt, HalvingMinOpt,
                                HalvingSeOpt, HalvingShareOpt, IncludeTargetOpt, JsonOpt, LibraryOpt, LoraModeOpt,
                                MergeMethodOpt, NoCacheOpt, PickleOpt, PrecisionOpt, PrefilterKeepOpt, PrefilterMinOpt,
                                PrefilterSignalsOpt, RayAddressOpt, SelectorOpt, comma_list, emit, err, given,
                                require_merge_method)
from mashup.cli_run import demo_cmd, run_cmd
from mashup.cli_runner import run_command_line
from mashup.config import (EvalConfig, HalvingConfig, MergeConfig, PrefilterConfig, SelectConfig, TrainConfig,
                           max_share_option)
from mashup.errors import MergeError
from mashup.experiment import cli as experiment_cli
from mashup.progress import score_cell, scoring_bar, selection_summary, training_bars
from mashup.switch.cli import switch_app

if TYPE_CHECKING:
    from mashup.verbs import SelectResult

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Mashup Learning: fine-tune from merged past checkpoints.")
app.add_typer(library_app, name="library")
app.add_typer(tasks_app, name="tasks")
app.add_typer(models_app, name="models")
app.command("experiment")(experiment_cli.experiment_cmd)
app.command("report")(experiment_cli.report_cmd)
app.add_typer(switch_app, name="switch")


@app.command("select")
@with_data_options
def select_cmd(base: BaseOpt, data: DataOptions, library: LibraryOpt = None,
               samples: Annotated[int, typer.Option("--samples", help="train examples scored per checkpoint")] = 256,
               k: Annotated[int, typer.Option("--k", help="how many top checkpoints count as selected")] = 2,
               metric: Annotated[str, typer.Option("--metric", help="loss | accuracy")] = "loss",
               with_accuracy: Annotated[bool, typer.Option(
                   "--with-accuracy", help="also score accuracy when ranking by loss (cloze: every choice's "
                   "forward pass, not only the correct one's)")] = False,
               seed: Annotated[int, typer.Option("--seed", help="seed of the train sample")] = 0,
               batch_size: Annotated[int, typer.Option("--batch-size", help="examples per scoring batch")] = 16,
               kind: Annotated[str, typer.Option("--kind", help="lora | full")] = "lora",
               merge_method: MergeMethodOpt = None, lora_mode: LoraModeOpt = None,
               allow_pickle: PickleOpt = False, no_cache: NoCacheOpt = False, include_target: IncludeTargetOpt = False,
               selector: SelectorOpt = "exhaustive", halving_min_samples: HalvingMinOpt = None,
               halving_factor: HalvingFactorOpt = None, halving_keep_within_se: HalvingSeOpt = None,
               halving_max_share: HalvingShareOpt = None, prefilter_keep: PrefilterKeepOpt = None,
               prefilter_min_keep: PrefilterMinOpt = None, prefilter_signals: PrefilterSignalsOpt = None,
               executor: ExecutorOpt = "local", ray_address: RayAddressOpt = None,
               precision: PrecisionOpt = None, as_json: JsonOpt = False,
               rows: Annotated[int, typer.Option("--rows", min=0, help="ranks the table shows (0: all; --json "
                                                 "always lists every one)")] = 20) -> None:
    """Rank compatible checkpoints by loss (or accuracy) on a sample of the target's train split."""
    from mashup.library import Library, check_kind
    from mashup.merging.compat import method_and_mode
    from mashup.verbs import select

    check_kind(kind)
    merge = MergeConfig(**given(method=merge_method, lora_mode=lora_mode))
    try:
        method_and_mode(merge, kind)  # an unknown method fails here, before the base model loads
    except MergeError as exc:  # the only one it raises: the method's
        raise MergeError(exc.what, "--merge-method", exc.fix) from None
    Library.existing(library)
    config = SelectConfig(samples=samples, k=k, metric=metric,  # type: ignore[arg-type]
                          with_accuracy=with_accuracy, seed=seed, batch_size=batch_size, cache=not no_cache,
                          include_target_checkpoints=include_target, selector=selector,  # type: ignore[arg-type]
                          executor=executor, ray_address=ray_address,  # type: ignore[arg-type]
                          halving=HalvingConfig(**given(min_samples=halving_min_samples, factor=halving_factor,
                                                        keep_within_se=halving_keep_within_se),
                                                **max_share_option(halving_max_share)),
                          prefilter=PrefilterConfig(**given(keep=prefilter_keep, min_keep=prefilter_min_keep,
                                                            signals=comma_list(prefilter_signals))))
    with scoring_bar(err) as progress:
        result = select(base, data.config(), config, library, kind=kind, merge=merge, allow_pickle=allow_pickle,
                        precision=precision, progress=progress)  # type: ignore[arg-type]
    err.print(selection_summary(result.stats), highlight=False)
    emit(result.to_dict(), as_json, _ranking_table(result, metric, rows))


def _ranking_table(result: SelectResult, metric: str, rows: int) -> Table:
    """The ranking's first ``rows`` (0: all), with a caption saying how many more there are."""
    shown = result.ranking[:rows] if rows else result.ranking
    caption = (None if len(shown) == len(result.ranking)  # a library of 1,000 would scroll the summary away
               else f"the first {len(shown)} of {len(result.ranking)} ranked: --rows 0 or --json for all")
    table = Table("rank", "id", "task", "loss", "accuracy", "n", "seconds", title=f"ranking by {metric}",
                  caption=caption)
    for i, s in enumerate(shown, 1):
        seconds = "cached" if s.cached else f"{s.seconds:.1f}"
        table.add_row(str(i), s.id, s.task or "", f"{s.loss:.4f}", score_cell(s.accuracy, 3), str(s.n), seconds)
    return table


@app.command("merge")
@with_data_options
def merge_cmd(checkpoints: Annotated[list[str], typer.Option(
                  "--checkpoints", help="ids to merge: --checkpoints A B, or repeat the option")],
              out: Annotated[Path, typer.Option("--out", help="output dir (must not exist, or be empty)")],
              method: Annotated[str, typer.Option(
                  "--method", help="merge method (average, ties, dare_ties, dare_linear, task_arithmetic, "
                  "magnitude_prune, fisher, regmean)")] = "average",
              weights: Annotated[Optional[list[float]], typer.Option(
                  "--weights", help="one weight per checkpoint: --weights 0.7 0.3", show_default="equal")] = None,
              density: Annotated[Optional[float], typer.Option(
                  "--density", help=DENSITY_HELP, show_default=DENSITY_DEFAULT)] = None,
              lambda_: Annotated[float, typer.Option("--lambda", help="task-vector scale (task arithmetic, TIES, DARE)")
                                 ] = 1.0,
              normalize: Annotated[Optional[bool], typer.Option(
                  "--normalize/--no-normalize", help="divide by the sum of weights", show_default="the method's own")
              ] = None,
              sign: Annotated[str, typer.Option("--sign", help="mass | count")] = "mass",
              seed: Annotated[int, typer.Option("--seed", help="seed of random drops (DARE)")] = 0,
              lora_mode: LoraModeOpt = None,
              lora_rank: Annotated[Optional[int], typer.Option(
                  "--lora-rank", help="output LoRA rank in delta mode", show_default="the most common input rank")
              ] = None,
              base: Annotated[Optional[str], typer.Option("--base", help="base model of the checkpoints",
                                                          show_default="the first checkpoint's")] = None,
              data: DataOptions = DataOptions(),
              export_mergekit: Annotated[Optional[Path], typer.Option(
                  "--export-mergekit", help="also write the merge as a mergekit YAML file (a new file outside "
                  "--out; full fine-tunes only)",
                  show_default="none")] = None,
              library: LibraryOpt = None, as_json: JsonOpt = False) -> None:
    """Merge checkpoints into a PEFT adapter dir or an HF model dir."""
    from mashup.library import Library
    from mashup.verbs import merge

    require_merge_method(method, "--method")
    Library.existing(library)
    config = MergeConfig(method=method, weights=weights or None,  # type: ignore[arg-type]
                         density=density, lambda_=lambda_, normalize=normalize, sign=sign, seed=seed,
                         lora_mode=lora_mode, lora_rank=lora_rank)
    report = merge(checkpoints, config, out, library, base=base, data=data.config() if data.given() else None,
                   export_mergekit=export_mergekit)
    emit(report.to_dict() if as_json else f"merged {len(checkpoints)} checkpoints with {method} into {out}", as_json)


@app.command("train")
@with_data_options
def train_cmd(base: BaseOpt, data: DataOptions,
              out: Annotated[Path, typer.Option("--out", help="output dir (must not exist, or be empty)")],
              init: Annotated[Optional[Path], typer.Option(
                  "--init", help="merged adapter/model dir to start from",
                  show_default="a fresh LoRA / the base")] = None,
              mode: Annotated[str, typer.Option("--mode", help="lora | full")] = "lora",
              lr: Annotated[Optional[float], typer.Option(
                  "--lr", help="peak learning rate", show_default="2e-4 for LoRA, 2e-5 for full")] = None,
              epochs: Annotated[float, typer.Option(
                  "--epochs", help="passes over the train split (unless --max-steps)")] = 1.0,
              batch_size: Annotated[int, typer.Option("--batch-size", help="examples per optimizer step")] = 32,
              micro_batch_size: Annotated[Optional[int], typer.Option(
                  "--micro-batch-size", help="split each batch for memory (same update)",
                  show_default="the batch size")] = None,
              max_steps: Annotated[Optional[int], typer.Option(
                  "--max-steps", help="optimizer steps (overrides --epochs)", show_default="from --epochs")] = None,
              eval_every: Annotated[Optional[int], typer.Option(
                  "--eval-every", help="steps between held-out evaluations", show_default="10% of the steps")] = None,
              seed: Annotated[int, typer.Option("--seed", help="seed of the fresh LoRA and the data order")] = 0,
              allow_pickle: PickleOpt = False, precision: PrecisionOpt = None,
              as_json: JsonOpt = False) -> None:
    """Fine-tune from a fresh LoRA / the base, or from --init; records an accuracy curve."""
    from mashup.verbs import train_model

    config = TrainConfig(mode=mode, lr=lr, epochs=epochs, batch_size=batch_size,  # type: ignore[arg-type]
                         micro_batch_size=micro_batch_size, max_steps=max_steps, eval_every=eval_every, seed=seed)
    data_config = data.config()
    with training_bars(err) as stage:
        summary = train_model(base, data_config, config, out, init=init, progress=stage("model"),
                              allow_pickle=allow_pickle, precision=precision)  # type: ignore[arg-type]
    points = summary.result.curve
    table = Table("step", "accuracy", "loss", "train seconds", title=f"trained into {summary.out}")
    for p in points:
        table.add_row(str(p.step), f"{p.accuracy:.4f}", f"{p.loss:.4f}", f"{p.seconds:.1f}")
    emit(summary.to_dict(), as_json, table)


@app.command("eval")
@with_data_options
def eval_cmd(base: BaseOpt, data: DataOptions,
             adapter: Annotated[Optional[Path], typer.Option(
                 "--adapter", help="PEFT adapter dir to evaluate on the base", show_default="none: the base")] = None,
             model: Annotated[Optional[Path], typer.Option(
                 "--model", help="full HF model dir to evaluate instead of the base",
                 show_default="none: the base")] = None,
             split: Annotated[str, typer.Option(
                 "--split", help="test | train | validation (carved with --validation-size)")] = "test",
             batch_size: Annotated[int, typer.Option("--batch-size", help="examples per scoring batch")] = 16,
             allow_pickle: PickleOpt = False, precision: PrecisionOpt = None, as_json: JsonOpt = False) -> None:
    """Multiple-choice accuracy of the base, an adapter on it, or a full model."""
    from mashup.verbs import evaluate_model

    result = evaluate_model(base, data.config(), adapter=adapter, model_dir=model, allow_pickle=allow_pickle,
                            precision=precision,  # type: ignore[arg-type]
                            config=EvalConfig(split=split, batch_size=batch_size))  # type: ignore[arg-type]
    line = f"accuracy {result.accuracy:.4f}  loss {result.loss:.4f}  n {result.n}"
    emit(result.to_dict() if as_json else line, as_json)


app.command("run")(run_cmd)
app.command("demo")(demo_cmd)


def main() -> None:
    """The `mashup` command: ``sys.argv`` run through the app, every error one line (mashup.cli_runner)."""
    run_command_line(app, sys.argv[1:])
