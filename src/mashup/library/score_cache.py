"""Relevance scores kept beside the catalog, so selection only scores checkpoints it has not seen.

Selection cost grows with the library; re-selecting for the same target sample (another k, another
merge method, after adding checkpoints) then costs only the new checkpoints. A score is keyed by the
checkpoint's weight digest and a fingerprint of exactly what was scored: the base model files, the
tokenized requests and the precision. Selection re-checks the weight files first (``Library.fresh``),
so a digest stands for the bytes on disk and changed bytes never meet an old score. Next to each score the cache
keeps a readable target label, the sample's description and the seconds it took, for
``mashup library scores`` and for the cost a cold selection would have had, and the per-example
losses, so successive halving's paired comparisons decide the same way on a cached repeat.

Kept in its own SQLite file under the catalog's error policy (library.db), so scoring never touches
catalog entries and deleting the file is always safe.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from mashup.data.prompts import EncodedRequest
from mashup.io import loaded_weight_files
from mashup.library.db import ensure_table, read_connection, select_rows, write_transaction

CACHE_NAME = "scores.sqlite"
WHAT = "score cache"
_COLUMNS = {"checkpoint_sha": "TEXT", "fingerprint": "TEXT", "loss": "REAL", "accuracy": "REAL", "n": "INTEGER",
            "seconds": "REAL", "target": "TEXT", "sample": "TEXT", "created": "TEXT", "losses": "BLOB",
            "applies": "TEXT"}


# How scores are computed from those inputs (the loss's normalisation, the answer tokens counted, ...): bump it
# with any change that moves a score, so that caches written before the change are not read after it.
# 2: a row with a NaN choice score predicts no choice (``score_batches.predictions``), where the argmax took the
# first NaN; a cloze row whose other choice is NaN (its loss finite) moved its accuracy.
SCORING_VERSION = 2


def fingerprint(base_dir: Path, requests: Sequence[EncodedRequest], bf16: bool = False) -> str:
    """What the scores depend on: the base weights (by name, size and mtime), every token scored, the
    precision (bf16 rounds a loss about 1e-3 apart from fp32, enough to reorder a near-tie) and
    ``SCORING_VERSION``. fp32 keys of version 1 are those written before precision and version were part of
    the key, so those caches stay valid."""
    digest = hashlib.sha256(b"bf16|" if bf16 else b"")
    if SCORING_VERSION > 1:
        digest.update(f"scoring-v{SCORING_VERSION}|".encode())
    for path in loaded_weight_files(base_dir):  # not another copy beside them (consolidated.safetensors)
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    for request in requests:
        digest.update(repr((request.prompt_ids, request.continuation_ids, request.answer)).encode())
    return digest.hexdigest()


class CachedScore(NamedTuple):
    loss: float
    accuracy: float | None  # None: scored for a loss ranking, without accuracy
    n: int
    seconds: float | None  # what computing it took; None for scores cached before this was recorded
    losses: tuple[float, ...] | None = None  # per-example answer losses; None for rows cached before they were kept
    applies: str | None = None  # the LoRA's settings it was scored with (CheckpointRecord.applies); None: unknown


class ScoreRow(NamedTuple):
    checkpoint_sha: str
    loss: float
    accuracy: float | None
    n: int
    seconds: float
    losses: Sequence[float] | None = None
    applies: str | None = None


def pack_losses(losses: Sequence[float] | None) -> bytes | None:
    """Per-example losses as little-endian float64 (a few KB per score: cheap next to scoring them again)."""
    return None if losses is None else struct.pack(f"<{len(losses)}d", *losses)


def unpack_losses(blob: bytes | None) -> tuple[float, ...] | None:
    return None if blob is None else struct.unpack(f"<{len(blob) // 8}d", blob)


@dataclass
class ScoreEntry:
    """One cached score with what it was computed on, for the relevance matrix."""

    checkpoint_sha: str
    fingerprint: str
    loss: float
    accuracy: float | None
    n: int
    seconds: float | None
    target: str | None
    sample: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    applies: str | None = None


def _setup(conn) -> None:
    ensure_table(conn, "scores", _COLUMNS, "checkpoint_sha, fingerprint")


class ScoreCache:
    def __init__(self, library_dir: Path) -> None:
        self.path = Path(library_dir) / CACHE_NAME

    def get(self, key: str, checkpoint_shas: Iterable[str]) -> dict[str, CachedScore]:
        """Cached scores by checkpoint digest, for those present."""
        wanted = set(checkpoint_shas)
        with read_connection(self.path, WHAT) as conn:
            rows = select_rows(conn, "scores", ["checkpoint_sha", "loss", "accuracy", "n", "seconds", "losses",
                                                "applies"], "WHERE fingerprint = ?", (key,))
        return {r["checkpoint_sha"]: CachedScore(r["loss"], r["accuracy"], r["n"], r["seconds"],
                                                 unpack_losses(r["losses"]), r["applies"])
                for r in rows if r["checkpoint_sha"] in wanted}

    def put(self, key: str, scores: Iterable[ScoreRow | tuple], *,
            target: str | None = None, sample: dict[str, Any] | None = None) -> None:
        """Store scores computed on ``key``; ``target`` labels it and ``sample`` describes it (n, seed, ...)."""
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rows = [(*row[:5], pack_losses(row.losses), row.applies, key, target, json.dumps(sample or {}), created)
                for row in (ScoreRow(*s) for s in scores)]
        columns = ("checkpoint_sha", "loss", "accuracy", "n", "seconds", "losses", "applies", "fingerprint", "target",
                   "sample", "created")
        with write_transaction(self.path, WHAT, _setup) as conn:
            conn.executemany(f"INSERT OR REPLACE INTO scores ({', '.join(columns)}) "
                             f"VALUES ({', '.join('?' * len(columns))})", rows)

    def entries(self) -> list[ScoreEntry]:
        """Every cached score, oldest first."""
        with read_connection(self.path, WHAT) as conn:
            rows = select_rows(conn, "scores", [c for c in _COLUMNS if c != "losses"], "ORDER BY rowid")
        return [ScoreEntry(**{**r, "sample": json.loads(r["sample"] or "{}")}) for r in rows]
