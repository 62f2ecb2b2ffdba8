"""Checks of single values read from JSON (a catalog row, an adapter_config.json), and how an error shows one."""

from __future__ import annotations

import json
import math
from typing import Any

from mashup.errors import clipped


def is_int(value: Any) -> bool:
    """An integer, not a bool (JSON's true would pass ``isinstance(v, int)``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_count(value: Any) -> bool:
    """A positive integer."""
    return is_int(value) and value > 0


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool (an int of any size: isfinite would overflow on 10**400)."""
    return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and math.isfinite(value)


def shown(value: Any) -> str:
    """``value`` as an error message quotes it: as JSON (repr where it is not JSON, e.g. a BLOB put in a catalog
    row by hand), cut to 40 characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return clipped(text, 40)  # whitespace kept: in a value (a regex, say) it may be what is wrong
