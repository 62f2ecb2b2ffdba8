"""A persistent cache of the shapes of the model a base's config.json builds (``base_module_shapes``), in
``$MASHUP_CACHE/base_shapes.sqlite``: the build costs seconds per add (importing transformers, parsing the config,
importing the model's class), and what it yields depends only on code and config, so a later add replays it.

The key holds everything the build reads (checked: ``AutoConfig.from_pretrained`` on a local dir opens only its
config.json, and ``from_config`` no file): config.json as transformers parses it, the installed transformers (its
version and the digest of its RECORD, which lists every installed file's hash) and torch version, and ``FORMAT``.
A transformers that ``import`` would not take from that installed distribution (an editable install, a source
checkout on the path) is not cached. Only a build's result is stored, never a failure, and reading the key costs no
heavy import. A cache failure only logs a warning: the shapes are then built, as without the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from importlib import metadata, util
from pathlib import Path

from mashup.errors import MashupError
from mashup.library.db import ensure_table, read_connection, select_rows, write_transaction

logger = logging.getLogger(__name__)

CACHE_NAME = "base_shapes.sqlite"
FORMAT = 1  # bump when what is stored, or how the key is made, changes
_TABLE = "module_shapes"
_COLUMNS = {"key": "TEXT", "shapes": "TEXT", "transformers": "TEXT", "path": "TEXT"}

Shapes = dict[str, list[int]]


def cache_path() -> Path:
    """Where the cache is: ``$MASHUP_CACHE/base_shapes.sqlite`` (``~/.cache/mashup`` without it)."""
    from mashup.named_models import cache_root

    return cache_root() / CACHE_NAME


def installed_code() -> str | None:
    """What of the installed code the build depends on, read from package metadata (nothing imported): the
    transformers version and its RECORD's digest, and the torch version; None where transformers is not the
    installed distribution ``import transformers`` would load, so no key could stand for its code."""
    try:
        dist = metadata.distribution("transformers")
        record = dist.read_text("RECORD")
        spec = util.find_spec("transformers")
        torch_version = metadata.version("torch")
    except (metadata.PackageNotFoundError, ImportError, ValueError, OSError):
        return None
    origin = spec.origin if spec is not None else None
    installed = Path(str(dist.locate_file("transformers/__init__.py")))
    if not record or origin is None or Path(origin).resolve() != installed.resolve():
        return None  # e.g. editable: its files change in place under one version and RECORD
    loaded = sys.modules.get("transformers")
    if loaded is not None and getattr(loaded, "__version__", None) != dist.version:
        return None  # upgraded on disk under a running process: what it builds is the old code's
    return json.dumps([dist.version, hashlib.sha256(record.encode()).hexdigest(), torch_version])


def canonical_config(config_path: Path) -> str | None:
    """config.json as transformers reads it (``json.loads`` of its UTF-8 text), re-serialized in the same key order
    (the order the config's fields are set in); None where it does not read so (the build then says why)."""
    try:
        config = json.loads(config_path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(config, dict) and "configuration_files" in config:
        return None  # transformers may read another config.<version>.json in its place: not keyed here
    return json.dumps(config, separators=(",", ":"))


def shapes_key(model_dir: Path) -> str | None:
    """The cache key of the model ``model_dir``'s config.json builds; None where there is none."""
    config, code = canonical_config(model_dir / "config.json"), installed_code()
    if config is None or code is None:
        return None
    return hashlib.sha256(json.dumps([FORMAT, code, config]).encode()).hexdigest()


def cached_shapes(key: str) -> Shapes | None:
    """The shapes stored under ``key``, or None (not stored, or the cache unreadable: a warning)."""
    try:
        with read_connection(cache_path(), "base shapes cache") as conn:
            rows = select_rows(conn, _TABLE, ["shapes"], "WHERE key = ?", (key,))
    except (MashupError, OSError) as exc:  # OSError: its dir unreadable
        logger.warning("not using the base shapes cache: %s", _line(exc))
        return None
    if not rows:
        return None
    shapes = _parsed(rows[0]["shapes"])
    if shapes is None:
        logger.warning("not using the base shapes cache %s: an unreadable entry", cache_path())
    return shapes


def _parsed(text: object) -> Shapes | None:
    try:
        shapes = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    if not isinstance(shapes, dict) or not all(
            isinstance(shape, list) and all(type(size) is int for size in shape) for shape in shapes.values()):
        return None
    return shapes


def store_shapes(key: str, shapes: Shapes, model_dir: Path) -> None:
    """Store a build's ``shapes`` under ``key`` (one transaction); a failure only logs a warning."""
    try:
        with write_transaction(cache_path(), "base shapes cache",
                               lambda conn: ensure_table(conn, _TABLE, _COLUMNS, "key")) as conn:
            conn.execute(f"INSERT OR REPLACE INTO {_TABLE} (key, shapes, transformers, path) VALUES (?, ?, ?, ?)",
                         (key, json.dumps(shapes), _transformers_version(), str(model_dir)))
    except (MashupError, OSError) as exc:  # a cache: the shapes are still right, only the next add builds again
        logger.warning("cannot cache the base's shapes: %s", _line(exc))


def _transformers_version() -> str | None:
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def _line(exc: MashupError | OSError) -> str:
    return exc.line() if isinstance(exc, MashupError) else f"{type(exc).__name__}: {exc}"
