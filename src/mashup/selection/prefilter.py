"""Prefilters: rank LoRA candidates without a forward pass per candidate, keep the most promising.

Each signal gives a value per candidate, lower meaning more promising. One probe pass of the base over
the target sample serves every signal; each candidate's factors are read once. The kept set takes the
signals' best candidates in turn (round robin), so one misleading signal cannot crowd out the other.
Values are cached per weights and target sample, so a repeated selection runs no probe at all.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mashup.config import PrefilterConfig
from mashup.data.prompts import EncodedRequest
from mashup.errors import MashupError, listed
from mashup.evaluation import ScoreSettings
from mashup.library import CheckpointRecord
from mashup.selection.arrow import Layout, affinity, prototypes_of, unit_inputs
from mashup.selection.factors import FactorReader, StackedFactors, factor_count
from mashup.selection.first_order import predicted_changes
from mashup.selection.probe import Probe, run_probe
from mashup.selection.signal_cache import SignalCache, weights_key
from mashup.selection.signal_ranking import best_by_signals
from mashup.selection.slots import SlotLayout, input_features

logger = logging.getLogger(__name__)
SIGNALS = ("first_order", "arrow")
CHUNK = 32  # candidates whose factors are stacked for one batched product (about 320 MB of SmolLM2 adapters)
CHUNK_BYTES = 512 << 20  # and at most this much of them in float32 (6 rank-8 adapters of a 7B Llama)
ARROW_ROWS = 256  # prototype rows matched at a time (77 MB of SmolLM2's in float16)
ARROW_BYTES = 128 << 20  # and at most this much of them (58 rows of a 7B Llama's, 2.2 MB each)
# below this many ranked candidates the signals are no safe cut (measured at 96: a target's exhaustive top 1 ranked
# 52nd by the first-order estimate and 81st by Arrow, so keeping half lost it; among 1,000 the worse of exhaustive's
# top 2 ranked at most 335th by Arrow, inside the half kept)
SAFE_CUT_MIN_POOL = 500
# a signal's value where it has none (NaN or inf: the weights, or float32 arithmetic on them, overflow): cached as
# that, so a repeat knows it without a probe (a NaN would be kept as NULL and read back as missing), and never ranked
NO_VALUE = math.inf


@dataclass
class PrefilterResult:
    kept: list[CheckpointRecord]
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # signal -> record id -> value
    probe_tokens: int = 0  # forward-token equivalents of the probe (backward counted as two forwards)
    seconds: float = 0.0
    probe_seconds: float = 0.0  # of ``seconds``: the probe (the rest reads factors and computes the signals)


def keep_count(n: int, config: PrefilterConfig, k: int = 1) -> int:
    """How many of ``n`` ranked candidates the prefilter keeps: ``config.keep`` (a share or a count), at least
    ``config.min_keep`` and the ``k`` to select (else halving could select fewer), at most all."""
    wanted = math.ceil(config.keep * n) if config.keep < 1 else int(config.keep)
    return min(n, max(wanted, config.min_keep, k))


def run_prefilter(records: Sequence[CheckpointRecord], requests: Sequence[EncodedRequest], settings: ScoreSettings,
                  base_dir: Path, config: PrefilterConfig, fingerprint: str, *, k: int = 1,
                  library_dir: Path | None = None, cache_values: bool = True, allow_pickle: bool = False
                  ) -> PrefilterResult:
    """The candidates worth scoring: the best ``config.keep`` of those the signals can rank (plain LoRA
    adapters on the library's most common set of target modules, which the probe covers, with a finite
    value of every signal), plus every one they cannot rank; never fewer than ``k`` (``keep_count``).

    With ``library_dir`` Arrow's prototypes are cached there (they depend on the weights' bytes alone, so
    they are kept even when ``cache_values`` is off), and with ``cache_values`` the signals' values for
    this ``fingerprint`` too."""
    start = time.perf_counter()
    layouts = {r.id: SlotLayout.of(r) for r in records}
    modules = _most_common_modules(layout.modules for layout in layouts.values() if layout is not None)
    eligible = [r for r in records if layouts[r.id] is not None and layouts[r.id].modules == modules]
    count = keep_count(len(eligible), config, k)
    if count >= len(eligible):
        return PrefilterResult(list(records), seconds=time.perf_counter() - start)
    if len(eligible) < SAFE_CUT_MIN_POOL:
        logger.warning("the prefilter's signals are too weak to cut %d candidates (under %d) safely: it may drop the "
                       "best ones; on a pool this small use the halving selector (--selector halving)", len(eligible),
                       SAFE_CUT_MIN_POOL)
    cache = SignalCache(library_dir) if library_dir is not None else None
    keys = {r.id: weights_key(r, allow_pickle) for r in eligible}
    value_cache = cache if cache_values else None
    values = {signal: _cached(value_cache, signal, fingerprint, eligible, keys) for signal in config.signals}
    missing = {signal: [r for r in eligible if r.id not in values[signal]] for signal in config.signals}
    result = PrefilterResult([])
    if any(missing.values()):
        probe = run_probe(base_dir, requests, settings, modules, gradients=bool(missing.get("first_order")),
                          inputs=bool(missing.get("arrow")), allow_pickle=allow_pickle)
        result.probe_tokens = probe.tokens * (3 if probe.gradients else 1)
        result.probe_seconds = probe.seconds
        fresh = compute_signals(missing, probe, modules, keys, cache, settings.device, allow_pickle)
        for signal, new in fresh.items():
            values[signal].update(new)
            if value_cache is not None:
                value_cache.put_signals(signal, fingerprint, {keys[i]: v for i, v in new.items()})
    result.kept, result.values = _cut(records, eligible, values, count)
    result.seconds = time.perf_counter() - start
    return result


def _cut(records: Sequence[CheckpointRecord], eligible: Sequence[CheckpointRecord],
         values: dict[str, dict[str, float]], count: int) -> tuple[list[CheckpointRecord], dict[str, dict[str, float]]]:
    """The kept records (the ``count`` best ranked, every unranked one) and each signal's finite values.

    A candidate some signal has no finite value for is kept unranked, as the ineligible are, with a warning."""
    ranked = {r.id for r in eligible if all(math.isfinite(got.get(r.id, math.nan)) for got in values.values())}
    _warn_unranked([r for r in eligible if r.id not in ranked])
    chosen = best_by_signals({signal: {i: v for i, v in got.items() if i in ranked} for signal, got in values.items()},
                             count)
    finite = {signal: {i: v for i, v in got.items() if math.isfinite(v)} for signal, got in values.items()}
    return [r for r in records if r.id not in ranked or r.id in chosen], finite


def _warn_unranked(records: Sequence[CheckpointRecord]) -> None:
    if records:
        logger.warning("the prefilter has no value for %d candidate(s) (a signal of theirs is not finite: NaN or inf "
                       "weights, or weights that overflow float32): %s; kept unranked, their scores decide; check "
                       "their weights, or `mashup library remove ID`", len(records),
                       listed([f"{r.id} ({r.path})" for r in records]))


def _most_common_modules(module_sets: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    """The target modules most plain LoRA adapters share (ties: the first in sorted order), so that the
    ranked set does not hang on which adapter comes first; () where there is none."""
    counts = Counter(module_sets)
    return min(counts, key=lambda modules: (-counts[modules], modules)) if counts else ()


def cache_prototypes(records: Sequence[CheckpointRecord], library_dir: Path, *, allow_pickle: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> int:
    """Compute and cache Arrow's prototypes of the plain LoRA adapters among ``records`` that have none yet
    (each file read once, on the CPU); returns how many were computed.

    Prototypes depend on the weights alone, so registering an adapter is the time to make them: then a
    prefilter by Arrow reads no candidate from the first selection on (``library add``, ``mashup run``).
    """
    by_layout: dict[tuple[tuple[str, int], ...], list[CheckpointRecord]] = {}
    for record in records:
        layout = SlotLayout.of(record)
        if layout is not None:
            by_layout.setdefault(input_features(record, layout.modules), []).append(record)
    cache, computed = SignalCache(library_dir), 0  # a cache that cannot be written: its warning, and no work
    total, done = sum(len(group) for group in by_layout.values()), 0
    for rows, group in by_layout.items():
        keys = {r.id: weights_key(r, allow_pickle) for r in group}
        known = cache.prototype_keys(keys.values(), rows)
        todo = [r for r in group if keys[r.id] not in known] if cache.usable else []
        done += len(group) - len(todo)
        reader, modules = FactorReader(torch.device("cpu"), allow_pickle), [m for m, _ in rows]
        for chunk in _chunks(todo, CHUNK):
            flat = _prototype_rows(reader.read(chunk, modules), modules)
            cache.put_prototypes({keys[r.id]: row for r, row in zip(chunk, flat)}, rows)
            if not cache.usable:
                return computed
            computed, done = computed + len(chunk), done + len(chunk)
            if progress is not None:
                progress(done, total)
    return computed


def warm_prototype_cache(records: Sequence[CheckpointRecord], library_dir: Path, **kwargs: Any) -> None:
    """``cache_prototypes`` after registering, where the checkpoints are in the library already: a failure
    must not fail (or undo) that, so it is a warning, and the first prefilter computes them instead."""
    try:
        cache_prototypes(records, library_dir, **kwargs)
    except (OSError, sqlite3.Error, MashupError, RuntimeError, ValueError, KeyError) as exc:
        logger.warning("Arrow prototypes not cached (%s); a prefilter computes them when it first needs them", exc)


def _cached(cache: SignalCache | None, signal: str, fingerprint: str, records: Sequence[CheckpointRecord],
            keys: dict[str, str]) -> dict[str, float]:
    if cache is None:
        return {}
    found = cache.signals(signal, fingerprint, keys.values())
    return {r.id: found[keys[r.id]] for r in records if keys[r.id] in found}


def compute_signals(missing: dict[str, list[CheckpointRecord]], probe: Probe, modules: Sequence[str],
                    keys: dict[str, str], cache: SignalCache | None, device: torch.device, allow_pickle: bool = False,
                    chunk: int = CHUNK) -> dict[str, dict[str, float]]:
    """Each missing value (signal -> record id -> value), reading each candidate's factors once (Arrow
    prototypes from the cache when there; ``keys`` are the records' weight keys).

    Candidates go in chunks of one rank (``chunk`` at most, and at most ``CHUNK_BYTES`` of factors), each
    chunk read into one tensor on the device the probe ran on (``FactorReader``): the first-order products
    and the prototypes' r x r problems are batched over it, and the prototypes come back in one copy.
    """
    first_ids = {r.id for r in missing.get("first_order", [])}
    arrow = _ArrowMatch(missing["arrow"], probe, modules, keys, cache, device) if missing.get("arrow") else None
    if arrow is not None:
        arrow.match_cached()  # first: what the cache cannot give (or stops giving) is made from the factors below
    gradients = {module: grad.to(device) for module, grad in probe.gradients.items()}  # no copy where they are
    fresh: dict[str, dict[str, float]] = {signal: {} for signal in missing}
    todo = [r for r in {r.id: r for records in missing.values() for r in records}.values()
            if r.id in first_ids or (arrow is not None and arrow.needs_factors(r))]
    reader = FactorReader(device, allow_pickle)
    chunks = _chunks(todo, chunk)
    reader.prefetch([r for group in chunks for r in group])
    for group in chunks:
        factors = reader.read(group, modules)
        first = [i for i, r in enumerate(group) if r.id in first_ids]
        if first:
            scales = [group[i].lora_scale for i in first]
            values = predicted_changes(gradients, _rows(factors, first, len(group)), scales)
            fresh["first_order"].update((group[i].id, _or_no_value(v)) for i, v in zip(first, values))
        new = [i for i, r in enumerate(group) if arrow is not None and arrow.needs_factors(r)]
        if new:
            arrow.match_new([group[i] for i in new], _prototype_rows(_rows(factors, new, len(group)), modules))
    if arrow is not None:
        fresh["arrow"] = arrow.values
    return fresh


def _or_no_value(value: float) -> float:
    """A signal's value, or ``NO_VALUE`` where it is not finite (the candidate is then kept unranked)."""
    return value if math.isfinite(value) else NO_VALUE


class _ArrowMatch:
    """Arrow's values (minus the affinity: lower is better) of candidates, their prototype rows matched a
    block at a time as they are read from the cache or made, so a library's rows are never all in memory."""

    def __init__(self, records: Sequence[CheckpointRecord], probe: Probe, modules: Sequence[str],
                 keys: dict[str, str], cache: SignalCache | None, device: torch.device) -> None:
        self.layout = input_features(records[0], modules)
        self.cache, self.device, self.keys = cache, device, keys
        self.block_rows = arrow_block_rows(self.layout)
        self.units = unit_inputs(probe.inputs, device)
        self.ids_by_key: dict[str, list[str]] = {}  # copies of one file share a key, and so a row
        for record in records:
            self.ids_by_key.setdefault(keys[record.id], []).append(record.id)
        self.values: dict[str, float] = {}  # NO_VALUE where the prototypes are NaN (``prototypes_of``)

    def match_cached(self) -> None:
        """Match the rows the cache has, a block at a time (``arrow_block_rows``)."""
        if self.cache is not None:
            for found, block in self.cache.prototype_blocks(self.ids_by_key, self.layout, self.block_rows):
                self._match([self.ids_by_key[key] for key in found], block)

    def needs_factors(self, record: CheckpointRecord) -> bool:
        """Whether the record's row is to be made from its factors: wanted, not matched yet, and the first
        of its copies."""
        owners = self.ids_by_key.get(self.keys.get(record.id), [])
        return bool(owners) and owners[0] == record.id and record.id not in self.values

    def match_new(self, records: Sequence[CheckpointRecord], rows: torch.Tensor) -> None:
        """Match rows made from the factors (float16 on the CPU, as the cache keeps them) and cache them."""
        self._match([self.ids_by_key[self.keys[r.id]] for r in records], rows)
        if self.cache is not None:
            self.cache.put_prototypes({self.keys[r.id]: row for r, row in zip(records, rows)}, self.layout)

    def _match(self, owners: list[list[str]], rows: torch.Tensor) -> None:
        """Each row's value to the ids that own it (copies of one file share a row)."""
        for start in range(0, len(owners), self.block_rows):
            block = rows[start:start + self.block_rows].to(self.device)
            for ids, value in zip(owners[start:start + self.block_rows], affinity(self.units, block, self.layout)):
                self.values.update((i, _or_no_value(-value)) for i in ids)


def arrow_block_rows(layout: Layout) -> int:
    """Prototype rows matched at a time: ``ARROW_ROWS``, fewer where they would take over ``ARROW_BYTES``."""
    return max(1, min(ARROW_ROWS, ARROW_BYTES // (2 * sum(size for _, size in layout))))


def _prototype_rows(factors: StackedFactors, modules: Sequence[str]) -> torch.Tensor:
    """Each stacked adapter's prototypes back to back in ``modules`` order, one float16 row on the CPU per adapter:
    one copy back for the chunk, rounded as the cache keeps them, so a cold and a warm run rank alike."""
    vectors = prototypes_of(factors)
    return torch.cat([vectors[m] for m in modules], dim=1).to("cpu", torch.float16)


def _rows(factors: StackedFactors, rows: list[int], count: int) -> StackedFactors:
    """The factors of the given adapters of a chunk (all of them without a copy)."""
    if len(rows) == count:
        return factors
    index = torch.tensor(rows, device=next(iter(factors.values()))[0].device)
    return {module: (a[index], b[index]) for module, (a, b) in factors.items()}


def _chunks(records: Sequence[CheckpointRecord], size: int) -> list[list[CheckpointRecord]]:
    """Up to ``size`` records of one rank each (factors of one rank stack), and at most ``CHUNK_BYTES``."""
    by_rank: dict[int | None, list[CheckpointRecord]] = {}
    for record in records:
        by_rank.setdefault(record.lora_r, []).append(record)
    chunks = []
    for group in by_rank.values():
        step = max(1, min(size, CHUNK_BYTES // (4 * factor_count(group[0]))))
        chunks += [group[i:i + step] for i in range(0, len(group), step)]
    return chunks
