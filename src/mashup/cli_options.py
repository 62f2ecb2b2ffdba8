"""CLI options shared by several sub-apps (the main verbs, `mashup switch`, ...), declared once."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

err = Console(stderr=True)  # progress bars and messages; results go to stdout

PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision", help="auto | fp32 | bf16 (default $MASHUP_PRECISION, else auto: bf16 where the CPU/GPU has fast bf16)")]
LibraryOpt = Annotated[Optional[str], typer.Option(
    "--library", help="library dir (default $MASHUP_LIBRARY or ~/.mashup/library)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
PickleOpt = Annotated[bool, typer.Option("--allow-pickle", help="allow .bin weights (torch.load weights_only)")]


def emit(data: Any, as_json: bool, table: Table | None = None) -> None:
    """A command's result on stdout: JSON with ``--json``, else the table (or the data as rich prints it)."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    elif table is not None:
        Console().print(table)
    else:
        Console().print(data)
