"""CLI options shared by several sub-apps (the main verbs, `mashup switch`, ...), declared once."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision", help="auto | fp32 | bf16 (default $MASHUP_PRECISION, else auto: bf16 where the CPU/GPU has fast bf16)")]
