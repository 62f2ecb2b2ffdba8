"""`mashup run` and `mashup demo`: the whole pipeline, over mashup.run and mashup.demo (registered in mashup.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import ValidationError
from rich.table import Table

from mashup.cli_data import DataOptions, with_data_options
from mashup.cli_options import (BASE_HELP, DENSITY_DEFAULT, DENSITY_HELP, LORA_MODE_DEFAULT, LORA_MODE_HELP,
                                MERGE_METHOD_HELP, IncludeTargetOpt, JsonOpt, LibraryOpt, NoCacheOpt, PrecisionOpt,
                                config_default, emit, err, from_config_option, given, require_merge_method)
from mashup.config import MergeConfig, RunConfig, SelectConfig, TrainConfig
from mashup.config_files import config_error, first_problem, read_config_mapping, require_known_keys
from mashup.errors import MashupError
from mashup.progress import training_bars


def _override(flag: str, help: str, model: type, field: str) -> Any:
    """A `run` option that overrides --config; its shown default is the config field's own default."""
    return from_config_option(flag, help, config_default(model, field))


@with_data_options
def run_cmd(base: Annotated[Optional[str], from_config_option("--base", BASE_HELP)] = None,
            data: DataOptions = DataOptions(),
            out: Annotated[Optional[Path], from_config_option("--out", "run dir (must not exist, or be empty)")] = None,
            library: LibraryOpt = None,
            config_file: Annotated[Optional[Path], typer.Option(
                "--config", help="RunConfig YAML (flags given override it)", show_default="none")] = None,
            baseline: Annotated[bool, typer.Option(
                "--baseline", help="also train from scratch, same settings")] = False,
            k: Annotated[Optional[int], _override("--k", "checkpoints to merge", SelectConfig, "k")] = None,
            samples: Annotated[Optional[int], _override(
                "--samples", "train examples scored per checkpoint", SelectConfig, "samples")] = None,
            metric: Annotated[Optional[str], _override("--metric", "loss | accuracy", SelectConfig, "metric")] = None,
            merge_method: Annotated[Optional[str], _override(
                "--merge-method", MERGE_METHOD_HELP, MergeConfig, "method")] = None,
            density: Annotated[Optional[float], from_config_option("--density", DENSITY_HELP, DENSITY_DEFAULT)] = None,
            lora_mode: Annotated[Optional[str], from_config_option(
                "--lora-mode", LORA_MODE_HELP, LORA_MODE_DEFAULT)] = None,
            mode: Annotated[Optional[str], _override("--mode", "lora | full", TrainConfig, "mode")] = None,
            lr: Annotated[Optional[float], from_config_option(
                "--lr", "peak learning rate", "2e-4 for LoRA, 2e-5 for full")] = None,
            max_steps: Annotated[Optional[int], from_config_option(
                "--max-steps", "optimizer steps", "one epoch")] = None,
            eval_every: Annotated[Optional[int], from_config_option(
                "--eval-every", "steps between evaluations", "10% of the steps")] = None,
            batch_size: Annotated[Optional[int], _override(
                "--batch-size", "examples per optimizer step", TrainConfig, "batch_size")] = None,
            seed: Annotated[Optional[int], _override(
                "--seed", "seed of selection sample, merge and training", TrainConfig, "seed")] = None,
            no_register: Annotated[bool, typer.Option(
                "--no-register", help="do not add the result to the library")] = False,
            no_cache: NoCacheOpt = False, include_target: IncludeTargetOpt = False,
            precision: PrecisionOpt = None, as_json: JsonOpt = False) -> None:
    """Select, merge, train from the merge and evaluate; --baseline adds the from-scratch arm."""
    from mashup.library import Library
    from mashup.run import run

    overrides = {"base": base, "out": str(out) if out else None, "library": library, "baseline": baseline or None,
                 "add_to_library": False if no_register else None, "precision": precision}
    sections = {"data": data.given(),
                "select": {"k": k, "samples": samples, "metric": metric, "seed": seed,
                           "cache": False if no_cache else None,
                           "include_target_checkpoints": True if include_target else None},
                "merge": {"method": merge_method, "density": density, "lora_mode": lora_mode, "seed": seed},
                "train": {"mode": mode, "lr": lr, "max_steps": max_steps, "eval_every": eval_every,
                          "batch_size": batch_size, "seed": seed}}
    config = run_config(config_file, overrides, sections)
    require_merge_method(config.merge.method, "--merge-method" if merge_method else str(config_file))
    Library.existing(config.library)
    with training_bars(err) as stage:
        summary = run(config, stage)
    emit(summary, as_json, None if as_json else _summary_table(summary))


def run_config(config_file: Path | None, overrides: dict[str, Any], sections: dict[str, dict[str, Any]]
               ) -> RunConfig:
    """The file's own mapping with the flags given (None: not given) merged over it, validated once, so flags may
    supply what it leaves out; a missing --base, --out or --data names the file it is missing from, after any
    unknown key in it (``bsae:`` is a typo for ``base``, not a missing base)."""
    raw: dict[str, Any] = read_config_mapping(config_file) if config_file else {}
    require_known_keys(raw, RunConfig, config_file)
    flagged = set(given(**overrides))  # the fields the flags set, as dotted paths
    raw.update(given(**overrides))
    for section, values in sections.items():
        _merge_section(raw, section, given(**values))
        flagged |= {f"{section}.{name}" for name in given(**values)}
    where = str(config_file) if config_file else None  # a config given: the file the value is missing from
    for required in ("base", "out"):
        if not raw.get(required):
            raise MashupError(f"missing --{required}", where, f"pass --{required} or set it in --config")
    if isinstance(raw["data"], dict) and not raw["data"].get("data"):
        raise MashupError("missing --data", where, "pass --data TARGET or set data.data in --config")
    return _validated(raw, config_file, flagged)


def _validated(raw: dict[str, Any], config_file: Path | None, flagged: set[str]) -> RunConfig:
    """``raw`` as a RunConfig; an invalid value is blamed on the flag that gave it (raised as is: the CLI names
    the flag as typed) or else on the config file."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        field, _ = first_problem(exc)
        if config_file is None or any(field == name or field.startswith(f"{name}.") for name in flagged):
            raise
        raise config_error(exc, RunConfig, config_file) from None


def _merge_section(raw: dict[str, Any], section: str, flags: dict[str, Any]) -> None:
    """The flags given for one config section over the file's values (a non-mapping is left for validation). Other
    train data given on the command line is another target: the file's name for its own data (a run's recorded
    config writes it out) no longer applies, unless --name is given too (a --test file names nothing)."""
    current = raw.setdefault(section, {})
    if isinstance(current, dict):
        if section == "data" and any(key in flags and flags[key] != current.get(key) for key in ("data", "train")):
            current.pop("name", None)
        current.update(flags)


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table("arm", "step-0 accuracy", "final accuracy", "train seconds",
                  title=f"Mashup on {summary['target']}")
    for arm in ("mashup", "scratch"):
        if arm in summary:
            a = summary[arm]
            table.add_row(arm, f"{a['init_accuracy']:.4f}", f"{a['final_accuracy']:.4f}",
                          f"{a['train_seconds']:.1f}")
    if "parity" in summary:
        p = summary["parity"]
        table.caption = f"steps to parity: 99% {_parity_step(p['p99'])}, 100% {_parity_step(p['p100'])}"
    return table


def _parity_step(point: dict[str, Any]) -> str:
    """The step at which the Mashup arm reached this share of scratch's final accuracy, or "not reached"."""
    return "not reached" if point["step"] is None else str(point["step"])


def demo_cmd(out: Annotated[Optional[Path], typer.Option(
                 "--out", help="run dir (default ./runs/demo-<time>)")] = None,
             seeds: Annotated[Optional[list[int]], typer.Option(
                 "--seed", help="seeds to average (repeat)", show_default="0 and 1")] = None,
             precision: PrecisionOpt = None, as_json: JsonOpt = False) -> None:
    """Real SmolLM2-135M, real benchmarks, on a CPU: Mashup vs from-scratch, with a plot and a report."""
    from mashup.demo import run_demo

    report = run_demo(out, seeds=seeds or None, console=err, precision=precision)  # type: ignore[arg-type]
    if as_json:
        emit(report, as_json)
