"""`mashup library`, `mashup tasks` and `mashup models`: what is registered, and what is named."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.table import Table

from mashup.cli_options import JsonOpt, LibraryOpt, PickleOpt, emit, err
from mashup.config import DataConfig
from mashup.errors import MashupError
from mashup.progress import count_bar, score_cell

if TYPE_CHECKING:
    from mashup.library import Library
    from mashup.library.registration import Added

library_app = typer.Typer(no_args_is_help=True, help="Manage the checkpoint library.")
tasks_app = typer.Typer(no_args_is_help=True, help="Named benchmark tasks.")
models_app = typer.Typer(no_args_is_help=True, help="Named base models.")

WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, help="hashing threads",
                                                   show_default="CPU count")]


def _filter(flag: str, help: str, shown: str = "all") -> Any:
    """An optional filter: the default shown says what is listed without it."""
    return typer.Option(flag, help=help, show_default=shown)


@library_app.command("add")
def library_add(paths: Annotated[list[Path], typer.Argument(help="PEFT adapter dirs or full HF model dirs")],
                task: Annotated[Optional[str], typer.Option(
                    "--task", help="task the checkpoints were trained on (selection leaves out those trained on "
                                   "the target)", show_default="none")] = None,
                trained_on: Annotated[Optional[str], typer.Option(
                    "--trained-on", help="the data it was trained on (named task or data file): its fingerprint is "
                    "recorded so selection never ranks it for that data", show_default="--task when it names a task")
                ] = None,
                base: Annotated[Optional[str], typer.Option(
                    "--base", help="base of a full fine-tune", show_default="none (LoRA: from adapter_config.json)")
                ] = None,
                init: Annotated[Optional[str], typer.Option(
                    "--init", help="LoRA init weights (task-vector reference)", show_default="none")] = None,
                recursive: Annotated[bool, typer.Option(
                    "--recursive", "-r", help="every adapter/model dir under PATHS; those already registered with "
                    "the same weights are skipped, those whose registration is stale skipped with a warning "
                    "(--json: {added, skipped, relocated, repaired, stale} ids)")] = False,
                workers: WorkersOpt = None,
                library: LibraryOpt = None, allow_pickle: PickleOpt = False, as_json: JsonOpt = False) -> None:
    """Register checkpoints (all or none), hashing them in parallel; a re-scan (--recursive) adds the new ones.

    --json: the ids registered (new, relocated or repaired entries), or with --recursive {added: those ids,
    relocated and repaired: which of them, skipped, stale}."""
    from mashup.library import Library

    from mashup.data.tasks import is_task_name
    from mashup.data.target import load_target

    data = trained_on or (task if task and is_task_name(task) else None)
    fingerprint = load_target(DataConfig(data=data)).fingerprint if data else None
    lineage = {"trained_on": {"task": task, "data_fingerprint": fingerprint}} if fingerprint else None
    lib = Library(library)
    with count_bar(err, "hashing checkpoints", enabled=recursive or len(paths) > 1) as update:
        records = lib.add(paths, task=task, base=base, init_reference=init, allow_pickle=allow_pickle,
                          recursive=recursive, workers=workers, progress=update, data_fingerprint=fingerprint,
                          lineage=lineage)
    # what was added is said first: the prototypes are only a cache, and an interrupted warm-up (exit 130) must
    # not hide that the checkpoints are registered
    if as_json:
        emit(_added_json(records) if recursive else [r.id for r in records], True)
    else:
        sys.stdout.write(_added_text(records) + "\n")
    if any(r.kind == "lora" for r in records):
        from mashup.selection.prefilter import warm_prototype_cache

        with count_bar(err, "Arrow prototypes", enabled=recursive or len(paths) > 1) as update:
            warm_prototype_cache(records, lib.directory, allow_pickle=allow_pickle, progress=update)


def _plural(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _added_json(records: Added) -> dict[str, list[str]]:
    """A re-scan's --json: the ids registered (``added``, as a plain add lists them), which of them were relocated or
    repaired, and the ids of the registrations it skipped: with the same weights, or stale."""
    return {"added": [r.id for r in records], "skipped": [r.id for r in records.skipped],
            "relocated": [r.id for r in records.relocated], "repaired": [r.id for r in records.repaired],
            "stale": [s.record.id for s in records.stale]}


def _added_text(records: Added) -> str:
    """`library add`'s report: a line per checkpoint added (or relocated: its entry re-pointed at the dir it moved
    to; or repaired: it replaced an entry of its id that could not be read), then how many entries were repaired
    and how many checkpoints a re-scan found already registered."""
    said = {**{r.id: "relocated" for r in records.relocated}, **{r.id: "repaired" for r in records.repaired}}
    lines = [f"{said.get(r.id, 'added')} {r.id} {r.kind} {r.path}" for r in records]
    if records.repaired:
        entries = _plural(len(records.repaired), "unreadable catalog entry", "unreadable catalog entries")
        lines.append(f"repaired {entries}: registered afresh, with only this add's --task and --trained-on")
    if records.skipped:
        lines.append(f"skipped {_plural(len(records.skipped), 'checkpoint')} already registered with the same "
                     f"weights{'' if records or records.stale else ' (nothing new)'}")
    if records.stale:
        lines.append(f"skipped {_plural(len(records.stale), 'checkpoint')} whose registration is stale (see the "
                     "warnings: `mashup library remove ID`, then add again)")
    return "\n".join(lines)


@library_app.command("list")
def library_list(task: Annotated[Optional[str], _filter("--task", "only checkpoints of this task")] = None,
                 base: Annotated[Optional[str], _filter("--base", "same base by content, any spelling")] = None,
                 kind: Annotated[Optional[str], _filter("--kind", "lora | full", "both")] = None,
                 merged_from: Annotated[Optional[str], _filter("--merged-from", "lineage: merged from this id", "any")
                                        ] = None,
                 trained_on: Annotated[Optional[str], _filter("--trained-on", "lineage: task or data fingerprint",
                                                              "any")] = None,
                 library: LibraryOpt = None, as_json: JsonOpt = False) -> None:
    """List registered checkpoints, filtered by task, base, kind and lineage."""
    from mashup.library import Library

    name, fingerprint = _trained_on_target(trained_on)
    records = Library.existing(library).list(task=task, base=base, kind=kind, merged_from=merged_from,
                                             trained_on=name, trained_on_fingerprint=fingerprint)
    table = Table("id", "kind", "task", "base", "r", "path")
    for r in records:
        table.add_row(r.id, r.kind, r.task or "", r.base_model, str(r.lora_r or ""), r.path)
    emit([{k: v for k, v in r.to_dict().items() if k != "shapes"} for r in records], as_json, table)


def _trained_on_target(wanted: str | None) -> tuple[str | None, str | None]:
    """``--trained-on`` as selection would see that target: a named task or a data file gives its target's name and
    data fingerprint (what `library add --trained-on` records); anything else is a task name or fingerprint prefix."""
    from mashup.data.target import load_target
    from mashup.data.tasks import get_task, is_task_name

    if not wanted or (is_task_name(wanted) and not get_task(wanted).has_offline()):
        return wanted, None  # a task without its offline copy is not fetched for a listing: its name is matched
    if not is_task_name(wanted) and not Path(wanted).expanduser().exists():
        return wanted, None
    try:
        target = load_target(DataConfig(data=wanted))
    except MashupError:  # a dir or file that is no data (an adapter dir named after its task): a name to match
        return wanted, None
    return target.name, target.fingerprint


@library_app.command("show")
def library_show(checkpoint_id: str, library: LibraryOpt = None, as_json: JsonOpt = False) -> None:
    """Show one record: its shape, files, base identity and lineage."""
    from mashup.library import Library
    from mashup.library.report import record_text

    lib = Library.existing(library)
    record = lib.get(checkpoint_id)
    if as_json:
        emit(record.to_dict(), True)
    else:
        sys.stdout.write(record_text(record, lib) + "\n")


@library_app.command("remove")
def library_remove(checkpoint_id: str, library: LibraryOpt = None) -> None:
    """Remove a record (files on disk are left alone)."""
    from mashup.library import Library

    removed = Library.existing(library).remove(checkpoint_id)
    err.print(f"removed {removed.id}" + (f" (files left at {removed.path})" if removed.path else ""))


@library_app.command("verify")
def library_verify(library: LibraryOpt = None, workers: WorkersOpt = None, as_json: JsonOpt = False) -> None:
    """Hash every registered file again; list missing, changed or unreadable entries (exit 1 if any)."""
    from mashup.library import Library

    lib = Library.existing(library)
    records, unreadable = lib.entries()
    with count_bar(err, "verifying", enabled=len(records) > 1) as update:
        checks = lib.verify(records, workers=workers, progress=update)
    problems = [{"id": c.record.id, "status": c.status, "reason": c.reason, "path": c.record.path}
                for c in checks if c.status != "ok"]
    problems += [{"id": u.id, "status": "unreadable", "reason": f"{u.what}; {u.fix}", "path": u.path}
                 for u in unreadable]
    if not problems and not as_json:
        sys.stdout.write(f"all {_plural(len(checks), 'checkpoint')} verified: weights unchanged\n" if checks
                         else "no checkpoints registered: nothing to verify\n")
        return
    # unreadable rows were never hashed: they are problems, but not part of what was checked
    ok = sum(c.status == "ok" for c in checks)
    title = f"{ok} of {_plural(len(checks), 'checkpoint')} ok"
    if unreadable:
        title += f"; {_plural(len(unreadable), 'unreadable entry', 'unreadable entries')} not checked"
    table = Table("id", "status", "reason", title=title)
    for problem in problems:
        table.add_row(problem["id"], problem["status"], problem["reason"] or "")
    emit({"checked": len(checks), "ok": ok, "unreadable": len(unreadable), "problems": problems}, as_json, table)
    if problems:
        raise SystemExit(1)  # typer.Exit would only be returned under standalone_mode=False


@library_app.command("scores")
def library_scores(target: Annotated[Optional[str], _filter("--target", "target label (e.g. arc_easy)")] = None,
                   task: Annotated[Optional[str], _filter("--task", "checkpoints of this task")] = None,
                   checkpoint: Annotated[Optional[str], _filter("--checkpoint", "checkpoint id prefix")] = None,
                   metric: Annotated[str, typer.Option("--metric", help="loss | accuracy")] = "loss",
                   library: LibraryOpt = None, as_json: JsonOpt = False) -> None:
    """The checkpoints x targets relevance matrix from the score cache."""
    from mashup.library import Library
    from mashup.library.report import score_matrix

    if metric not in ("loss", "accuracy"):
        raise MashupError(f"unknown metric '{metric}'", None, "use --metric loss or --metric accuracy")
    lib = Library.existing(library)
    matrix = score_matrix(lib, target=target, task=task, checkpoint=checkpoint)
    if not matrix.checkpoints:
        if checkpoint is not None and not _registered_prefix(lib, checkpoint):
            lib.get(checkpoint)  # neither registered nor cached: the one-line error `library show` gives
        which = " match these filters" if target or task or checkpoint else " yet"
        err.print(f"no cached scores{which}: `mashup select` caches the scores it computes", highlight=False)
    table = Table("id", "task", *[c["label"] for c in matrix.columns], title=f"cached {metric} by target sample")
    for row in matrix.checkpoints:
        cells = matrix.cells[row["id"]]
        values = [score_cell(cells[c["key"]][metric]) if c["key"] in cells else "" for c in matrix.columns]
        table.add_row(row["id"] + ("" if row["in_library"] else " (removed)"), row["task"] or "", *values)
    emit(matrix.to_dict(), as_json, table)


def _registered_prefix(library: Library, prefix: str) -> bool:
    """Whether any catalog entry's id, readable or not, starts with ``prefix``."""
    records, unreadable = library.entries()
    return any(str(entry.id).startswith(prefix) for entry in [*records, *unreadable])


@tasks_app.command("list")
def tasks_list(as_json: JsonOpt = False) -> None:
    """Named benchmark tasks, their source and split sizes, and the named models' measured zero-shot cloze accuracy."""
    from mashup.data.tasks import TASKS
    from mashup.named_models import ZERO_SHOT_CLOZE

    rows = []
    for name, task in TASKS.items():
        sizes = task.split_sizes()
        zero_shot = {model: {"accuracy": scores[name][0], "n": scores[name][1]}
                     for model, scores in ZERO_SHOT_CLOZE.items() if name in scores}
        rows.append({"task": name, "source": task.source_name(), "train": sizes and sizes.get("train"),
                     "test": sizes and sizes.get("test"), "zero_shot_cloze": zero_shot})
    table = Table("task", "source", "train", "test", "zero-shot cloze accuracy (n questions)")
    for row in rows:
        notes = ", ".join(f"{m} {z['accuracy']:.3f} ({z['n']})" for m, z in row["zero_shot_cloze"].items())
        table.add_row(row["task"], row["source"], str(row["train"] or "-"), str(row["test"] or "-"), notes or "-")
    emit(rows, as_json, table)


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Named base models, whether they are installed / converted, and their measured zero-shot cloze accuracy."""
    import importlib.util

    from mashup.named_models import NAMED_MODELS, ZERO_SHOT_CLOZE, default_cache_dir, is_converted

    rows = []
    for name, named in NAMED_MODELS.items():
        packages = (named.package, *named.chunk_packages)
        zero_shot = {t: {"accuracy": a, "n": n} for t, (a, n) in ZERO_SHOT_CLOZE.get(name, {}).items()}
        rows.append({"model": name, "description": named.description,
                     "installed": all(importlib.util.find_spec(p) is not None for p in packages),
                     "converted": is_converted(default_cache_dir() / name), "zero_shot_cloze": zero_shot})
    table = Table("model", "description", "installed", "converted", "zero-shot cloze accuracy (n)")
    for row in rows:
        scores = ", ".join(f"{t} {s['accuracy']:.3f} ({s['n']})" for t, s in row["zero_shot_cloze"].items())
        table.add_row(row["model"], row["description"], str(row["installed"]), str(row["converted"]), scores or "-")
    emit(rows, as_json, table)
