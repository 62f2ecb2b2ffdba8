"""CLI options shared by several commands (the main verbs, `mashup switch`, ...), declared once, and the helpers
that declare an option whose default is left to a config."""

from __future__ import annotations

import json
import math
import sys
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from mashup.config import AUTO_MAX_SHARE, BASE_SPELLINGS, HalvingConfig, MergeConfig, PrefilterConfig

err = Console(stderr=True)  # progress bars and messages; results go to stdout

PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision",
    help="auto | fp32 | bf16 (default $MASHUP_PRECISION, else auto: bf16 where the CPU/GPU has fast bf16)")]
LibraryOpt = Annotated[Optional[str], typer.Option(
    "--library", help="library dir (default $MASHUP_LIBRARY or ~/.mashup/library)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
PickleOpt = Annotated[bool, typer.Option("--allow-pickle", help="allow .bin weights (torch.load weights_only)")]


def emit(data: Any, as_json: bool, table: Table | None = None) -> None:
    """A command's result on stdout: JSON with ``--json``, else the table (or the data as rich prints it)."""
    if as_json:
        sys.stdout.write(json.dumps(_strict_json(data), indent=2, default=str) + "\n")
    elif table is not None:
        Console().print(table)
    else:
        Console().print(data)


def _strict_json(data: Any) -> Any:
    """``data`` with each float that is not finite (a NaN loss) as null: Python's json writes a bare NaN, which
    strict JSON readers (jq, JavaScript) refuse."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _strict_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_strict_json(value) for value in data]
    return data


def config_default(model: type, field: str) -> str:
    """A config field's own default, shown for an option that leaves it to the config."""
    return str(model.model_fields[field].default)


def config_option(flag: str, help: str, model: type, field: str) -> Any:
    """An option that, when unset, leaves ``model``'s ``field`` at the config's default, which its help shows."""
    return typer.Option(flag, help=help, show_default=config_default(model, field))


def from_config_option(flag: str, help: str, shown: str = "") -> Any:
    """An option that overrides a --config file's value; ``shown``: the default when the file leaves it out."""
    return typer.Option(flag, help=help, show_default=f"from --config, else {shown}" if shown else "from --config")


def comma_list(text: str | None) -> list[str] | None:
    """A comma-separated option's items; None when it is unset."""
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def given(**options: Any) -> dict[str, Any]:
    """The options the user set (the config's own defaults apply to the rest)."""
    return {name: value for name, value in options.items() if value is not None}


BASE_HELP = f"base model: {BASE_SPELLINGS}"
BaseOpt = Annotated[str, typer.Option("--base", help=BASE_HELP)]
MERGE_METHOD_HELP = "merge method (see `mashup merge --help`)"
LORA_MODE_HELP = "ab | delta | concat"
LORA_MODE_DEFAULT = "the method's: ab for average and task_arithmetic, delta for the others"
# the merge methods' own densities (mashup.merging.registry, which imports torch; a test pins the text to it)
DENSITY_HELP = "fraction kept, (0, 1] (TIES, DARE, magnitude pruning)"
DENSITY_DEFAULT = "the method's: 0.2 for dare_linear, dare_ties, magnitude_prune and ties; none for the others"
MergeMethodOpt = Annotated[Optional[str], config_option("--merge-method", MERGE_METHOD_HELP, MergeConfig, "method")]
LoraModeOpt = Annotated[Optional[str], typer.Option("--lora-mode", help=LORA_MODE_HELP,
                                                    show_default=LORA_MODE_DEFAULT)]
IncludeTargetOpt = Annotated[bool, typer.Option(
    "--include-target-checkpoints", help="also rank checkpoints trained on the target (excluded by default)")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="rescore checkpoints scored before on this sample")]
SelectorOpt = Annotated[str, typer.Option("--selector", help="exhaustive | halving | prefilter+halving")]
HalvingMinOpt = Annotated[Optional[int], config_option(
    "--halving-min-samples", "halving: first round's sample size", HalvingConfig, "min_samples")]
HalvingFactorOpt = Annotated[Optional[float], config_option(
    "--halving-factor", "halving: keep 1/factor, grow the sample factor times", HalvingConfig, "factor")]
HalvingSeOpt = Annotated[Optional[float], config_option(
    "--halving-keep-within-se", "halving: also keep candidates within this many standard errors of the k-th best "
    "(paired; 0: off)", HalvingConfig, "keep_within_se")]
HalvingShareOpt = Annotated[Optional[str], typer.Option(
    "--halving-max-share", metavar="S|auto|none", help="halving: keep near-ties only while the selection's forward "
    f"tokens stay within this share of exhaustive scoring's (the schedule itself is never cut); auto: "
    f"{AUTO_MAX_SHARE:g} where that leaves the near-ties room (large pools), else none", show_default="auto")]
PrefilterKeepOpt = Annotated[Optional[float], config_option(
    "--prefilter-keep", "prefilter+halving: candidates the signals keep for halving: a fraction (<1) or a count",
    PrefilterConfig, "keep")]
PrefilterMinOpt = Annotated[Optional[int], config_option(
    "--prefilter-min-keep", "prefilter+halving: never keep fewer (or all)", PrefilterConfig, "min_keep")]
PrefilterSignalsOpt = Annotated[Optional[str], typer.Option(
    "--prefilter-signals", metavar="first_order,arrow", help="prefilter+halving: the signals, comma-separated "
    "(arrow alone reads no candidate once its prototypes are cached)", show_default="first_order,arrow")]
ExecutorOpt = Annotated[str, typer.Option("--executor", help="where scoring runs: local | ray")]
RayAddressOpt = Annotated[Optional[str], typer.Option("--ray-address", help="existing Ray cluster",
                                                      show_default="none: start one locally")]


def option_named(field: str, argv: list[str]) -> str:
    """The flag the user typed for config ``field``, else the field: named as the field's last part
    (``merge.lora_mode`` -> ``--lora-mode``, ``weights.1`` -> ``--weights (value 2)``, ``lambda_`` ->
    ``--lambda``), or ending in it (``merge.method`` -> ``--merge-method``, ``halving.factor`` -> ``--halving-factor``).
    """
    parts = [part.rstrip("_").replace("_", "-") for part in field.split(".") if not part.isdigit()]
    if not parts:
        return f"'{field}'"
    typed = [arg.split("=", 1)[0] for arg in argv if arg.startswith("--")]
    exact = [f"--{'-'.join(parts[-2:])}", f"--{parts[-1]}"]  # --prefilter-keep before --keep, never --min-keep
    named = [flag for flag in exact if flag in typed] or [flag for flag in typed if flag.endswith(f"-{parts[-1]}")]
    if not named:
        return f"'{field}'"
    items = [int(part) + 1 for part in field.split(".") if part.isdigit()]
    return named[0] + (f" (value {items[-1]})" if items else "")


def require_merge_method(name: str, where: str | None) -> None:
    """Refuse an unknown merge method before any work, naming the flag or the file that gave it (the registry
    imports torch, so this is called in a command, not at import)."""
    from mashup.errors import MergeError
    from mashup.merging.registry import get_merge_method

    try:
        get_merge_method(name)
    except MergeError as exc:
        raise MergeError(exc.what, where, exc.fix) from None
