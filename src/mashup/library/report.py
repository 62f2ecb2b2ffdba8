"""Readable views of the library for the CLI: one record with its lineage, and the relevance matrix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mashup.errors import LibraryError
from mashup.io import readable_size
from mashup.library.catalog import Library
from mashup.library.records import CheckpointRecord
from mashup.library.score_cache import ScoreCache, ScoreEntry
from mashup.scoring import accuracy_if_finite


def _checkpoint_label(library: Library, checkpoint_id: str) -> str:
    try:
        record = library.get(checkpoint_id)
    except LibraryError:  # lineage may name checkpoints since removed
        return f"{checkpoint_id} (not in the library)"
    return f"{record.id} ({record.task})" if record.task else record.id


def lineage_lines(record: CheckpointRecord, library: Library) -> list[str]:
    """The lineage as indented lines: merged-from ids with their tasks, what it was trained on, the run."""
    lineage = dict(record.lineage)
    lines = []
    merged = lineage.pop("merged_from", None)
    if merged:
        lines.append(f"  merged from  {', '.join(_checkpoint_label(library, str(i)) for i in merged)}")
    trained = lineage.pop("trained_on", None)
    if isinstance(trained, dict):
        parts = [str(trained.get("task") or "?")]
        if trained.get("data_fingerprint"):
            parts.append(f"data {str(trained['data_fingerprint'])[:12]}")
        parts += [f"{k} {v}" for k, v in trained.items() if k not in ("task", "data_fingerprint")]
        lines.append(f"  trained on   {', '.join(parts)}")
    elif trained:
        lines.append(f"  trained on   {trained}")
    run = lineage.pop("run", None)
    if run:
        lines.append(f"  run          {run}")
    lines += [f"  {key:<12} {value}" for key, value in lineage.items()]
    return lines


def record_text(record: CheckpointRecord, library: Library) -> str:
    """``mashup library show``: the record's fields a person looks for, then its lineage."""
    if record.kind == "lora":
        shape = (f"lora r={record.lora_r} alpha={record.lora_alpha:g}{' rsLoRA' if record.use_rslora else ''} "
                 f"on {','.join(record.target_modules or [])}")
    else:
        shape = f"full ({record.architecture})"
    identity = f" (identity {record.base_identity[:12]})" if record.base_identity else " (identity unresolved)"
    files = ", ".join(f"{s['name']} {readable_size(int(s['size']))}" for s in record.file_stats) or "-"
    rows = [("id", record.id), ("kind", shape), ("task", record.task or "-"), ("base", record.base_model + identity),
            ("path", record.path), ("weights", f"{files}; sha256 {record.sha256}"),
            ("data", record.data_fingerprint or "-"), ("init", record.init_reference or "-"),
            ("created", record.created)]
    rows += [(f"meta {key}", str(value)) for key, value in record.metadata.items()]
    lines = [f"{key:<10} {value}" for key, value in rows]
    lineage = lineage_lines(record, library)
    lines += ["lineage"] + lineage if lineage else ["lineage    -"]
    return "\n".join(lines)


@dataclass
class ScoreMatrix:
    """Checkpoints x scored samples; ``cells[checkpoint id][column key]`` holds loss, accuracy, n, seconds."""

    columns: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    cells: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def column_label(entry: ScoreEntry) -> str:
    sample = entry.sample
    target = entry.target or sample.get("target") or f"sample {entry.fingerprint[:8]}"
    details = [f"n={entry.n}"] + [f"{k}={sample[k]}" for k in ("seed", "formulation") if k in sample]
    return f"{target} ({' '.join(details)})"


def score_matrix(library: Library, *, target: str | None = None, task: str | None = None,
                 checkpoint: str | None = None) -> ScoreMatrix:
    """The relevance matrix from the score cache; filtered by target label, checkpoint task and id prefix."""
    by_sha = {r.sha256: r for r in library.list()}
    matrix = ScoreMatrix()
    columns: dict[str, dict[str, Any]] = {}
    rows: dict[str, dict[str, Any]] = {}
    for entry in ScoreCache(library.directory).entries():
        record = by_sha.get(entry.checkpoint_sha)
        if record is not None and entry.applies is not None and entry.applies != record.applies:
            continue  # scored with other LoRA settings than the record's (same weights): not its score
        row_id = record.id if record else entry.checkpoint_sha[:12]
        row_task = record.task if record else None
        label = entry.target or entry.sample.get("target")
        if (target and label != target) or (task and row_task != task) or (checkpoint and
                                                                           not row_id.startswith(checkpoint)):
            continue
        key = entry.fingerprint[:12]
        columns.setdefault(key, {"key": key, "label": column_label(entry), "target": label, "fingerprint":
                                 entry.fingerprint, **{k: v for k, v in entry.sample.items() if k != "target"}})
        rows.setdefault(row_id, {"id": row_id, "task": row_task, "in_library": record is not None})
        # rows cached before a loss that is not finite (NULL in SQLite) lost its accuracy hold one read off NaN logits
        accuracy = accuracy_if_finite(entry.loss, entry.accuracy)
        matrix.cells.setdefault(row_id, {})[key] = {"loss": entry.loss, "accuracy": accuracy,
                                                    "n": entry.n, "seconds": entry.seconds, "created": entry.created}
    matrix.columns, matrix.checkpoints = list(columns.values()), list(rows.values())
    return matrix
