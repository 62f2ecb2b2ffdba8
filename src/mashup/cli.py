"""The `mashup` command line: a thin layer over the typed functions in mashup.verbs and mashup.run."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from mashup.config import DataConfig, EvalConfig, MergeConfig, RunConfig, SelectConfig, TrainConfig, load_config
from mashup.errors import MashupError
from mashup.progress import quiet_third_party, training_bars
from mashup.switch.cli import switch_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Mashup Learning: fine-tune from merged past checkpoints.")
library_app = typer.Typer(no_args_is_help=True, help="Manage the checkpoint library.")
tasks_app = typer.Typer(no_args_is_help=True, help="Named benchmark tasks.")
app.add_typer(library_app, name="library")
app.add_typer(tasks_app, name="tasks")
models_app = typer.Typer(no_args_is_help=True, help="Named base models.")
app.add_typer(models_app, name="models")
err = Console(stderr=True)
app.add_typer(switch_app, name="switch")

LibraryOpt = Annotated[Optional[str], typer.Option("--library", help="library dir (default $MASHUP_LIBRARY or ~/.mashup/library)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
BaseOpt = Annotated[str, typer.Option("--base", help="base model: smollm2-135m, a local HF dir or a Hub id")]
DataOpt = Annotated[str, typer.Option("--data", help="named task (mashup tasks list) or data file/dir")]
TrainFileOpt = Annotated[Optional[str], typer.Option("--train", help="explicit train file")]
TestFileOpt = Annotated[Optional[str], typer.Option("--test", help="explicit test file")]
TestSizeOpt = Annotated[float, typer.Option("--test-size", help="fraction or count carved out as test")]
ScoringOpt = Annotated[str, typer.Option("--scoring", help="letter | cloze | auto (cloze below 1B parameters)")]
MaxLenOpt = Annotated[int, typer.Option("--max-length", help="max tokens per example")]
MaxTrainOpt = Annotated[Optional[int], typer.Option("--max-train-examples", help="cap on train examples")]
MaxTestOpt = Annotated[Optional[int], typer.Option("--max-test-examples", help="cap on test examples")]
PickleOpt = Annotated[bool, typer.Option("--allow-pickle", help="allow .bin weights (torch.load weights_only)")]


def _data(data: str, train: str | None, test: str | None, test_size: float, scoring: str, max_length: int,
          max_train: int | None, max_test: int | None) -> DataConfig:
    return DataConfig(data=data, train=train, test=test, test_size=test_size, scoring=scoring,  # type: ignore[arg-type]
                      max_length=max_length, max_train_examples=max_train, max_test_examples=max_test)


def emit(data: Any, as_json: bool, table: Table | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    elif table is not None:
        Console().print(table)
    else:
        Console().print(data)


@library_app.command("add")
def library_add(paths: Annotated[list[Path], typer.Argument(help="PEFT adapter dirs or full HF model dirs")],
                task: Annotated[Optional[str], typer.Option("--task")] = None,
                base: Annotated[Optional[str], typer.Option("--base", help="base of a full fine-tune")] = None,
                init: Annotated[Optional[str], typer.Option("--init", help="LoRA init weights (task-vector reference)")] = None,
                library: LibraryOpt = None, allow_pickle: PickleOpt = False, as_json: JsonOpt = False) -> None:
    """Register checkpoints (all or none)."""
    from mashup.library import Library

    records = Library(library).add(paths, task=task, base=base, init_reference=init, allow_pickle=allow_pickle)
    emit([r.id for r in records] if as_json else "\n".join(f"added {r.id} {r.kind} {r.path}" for r in records), as_json)


@library_app.command("list")
def library_list(library: LibraryOpt = None, as_json: JsonOpt = False) -> None:
    """List registered checkpoints."""
    from mashup.library import Library

    records = Library(library).list()
    table = Table("id", "kind", "task", "base", "r", "path")
    for r in records:
        table.add_row(r.id, r.kind, r.task or "", r.base_model, str(r.lora_r or ""), r.path)
    emit([{k: v for k, v in r.to_dict().items() if k != "shapes"} for r in records], as_json, table)


@library_app.command("show")
def library_show(checkpoint_id: str, library: LibraryOpt = None) -> None:
    """Show one record in full (JSON)."""
    from mashup.library import Library

    emit(Library(library).get(checkpoint_id).to_dict(), True)


@library_app.command("remove")
def library_remove(checkpoint_id: str, library: LibraryOpt = None) -> None:
    """Remove a record (files on disk are left alone)."""
    from mashup.library import Library

    record = Library(library).remove(checkpoint_id)
    err.print(f"removed {record.id} (files left at {record.path})")


@tasks_app.command("list")
def tasks_list(as_json: JsonOpt = False) -> None:
    """Named benchmark tasks, their source and split sizes."""
    from mashup.data.tasks import TASKS

    rows = []
    for name, task in TASKS.items():
        sizes = task.split_sizes()
        rows.append({"task": name, "source": task.source_name(), "train": sizes and sizes.get("train"),
                     "test": sizes and sizes.get("test")})
    table = Table("task", "source", "train", "test")
    for row in rows:
        table.add_row(row["task"], row["source"], str(row["train"] or "-"), str(row["test"] or "-"))
    emit(rows, as_json, table)


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Named base models, whether they are installed / converted, and their measured zero-shot cloze accuracy."""
    import importlib.util

    from mashup.named_models import NAMED_MODELS, ZERO_SHOT_CLOZE, default_cache_dir, is_converted

    rows = []
    for name, named in NAMED_MODELS.items():
        packages = (named.package, *named.chunk_packages)
        rows.append({"model": name, "description": named.description,
                     "installed": all(importlib.util.find_spec(p) is not None for p in packages),
                     "converted": is_converted(default_cache_dir() / name),
                     "zero_shot_cloze": {t: {"accuracy": a, "n": n} for t, (a, n) in ZERO_SHOT_CLOZE.get(name, {}).items()}})
    table = Table("model", "description", "installed", "converted", "zero-shot cloze accuracy (n)")
    for row in rows:
        scores = ", ".join(f"{t} {s['accuracy']:.3f} ({s['n']})" for t, s in row["zero_shot_cloze"].items())
        table.add_row(row["model"], row["description"], str(row["installed"]), str(row["converted"]), scores or "-")
    emit(rows, as_json, table)


@app.command("select")
def select_cmd(base: BaseOpt, data: DataOpt, library: LibraryOpt = None,
               samples: Annotated[int, typer.Option("--samples")] = 256, k: Annotated[int, typer.Option("--k")] = 2,
               metric: Annotated[str, typer.Option("--metric", help="loss | accuracy")] = "loss",
               seed: Annotated[int, typer.Option("--seed")] = 0,
               batch_size: Annotated[int, typer.Option("--batch-size")] = 16, kind: Annotated[str, typer.Option("--kind", help="lora | full")] = "lora",
               train: TrainFileOpt = None, test: TestFileOpt = None, test_size: TestSizeOpt = 0.2,
               scoring: ScoringOpt = "auto", max_length: MaxLenOpt = 384, allow_pickle: PickleOpt = False,
               no_cache: Annotated[bool, typer.Option("--no-cache", help="rescore checkpoints scored before")] = False,
               as_json: JsonOpt = False) -> None:
    """Rank compatible checkpoints by loss (or accuracy) on a sample of the target's train split."""
    from mashup.verbs import select

    result = select(base, _data(data, train, test, test_size, scoring, max_length, None, None),
                    SelectConfig(samples=samples, k=k, metric=metric, seed=seed, batch_size=batch_size,
                                 cache=not no_cache),  # type: ignore[arg-type]
                    library, kind=kind, allow_pickle=allow_pickle)
    table = Table("rank", "id", "task", "loss", "accuracy", "n", "seconds", title=f"ranking by {metric}")
    for i, s in enumerate(result.ranking, 1):
        seconds = "cached" if s.cached else f"{s.seconds:.1f}"
        table.add_row(str(i), s.id, s.task or "", f"{s.loss:.4f}", f"{s.accuracy:.3f}", str(s.n), seconds)
    emit(result.to_dict(), as_json, table)


@app.command("merge")
def merge_cmd(checkpoints: Annotated[list[str], typer.Option("--checkpoints", help="ids to merge (repeat)")],
              out: Annotated[Path, typer.Option("--out")], method: Annotated[str, typer.Option("--method")] = "average",
              weights: Annotated[Optional[list[float]], typer.Option("--weights")] = None,
              density: Annotated[float, typer.Option("--density", help="fraction kept, (0, 1]")] = 1.0,
              lambda_: Annotated[float, typer.Option("--lambda")] = 1.0,
              normalize: Annotated[Optional[bool], typer.Option("--normalize/--no-normalize")] = None,
              sign: Annotated[str, typer.Option("--sign", help="mass | count")] = "mass",
              seed: Annotated[int, typer.Option("--seed")] = 0,
              lora_mode: Annotated[str, typer.Option("--lora-mode", help="ab | delta | concat")] = "ab",
              base: Annotated[Optional[str], typer.Option("--base")] = None,
              data: Annotated[Optional[str], typer.Option("--data", help="target data (fisher, regmean)")] = None,
              export_mergekit: Annotated[Optional[Path], typer.Option("--export-mergekit", help="write mergekit YAML")] = None,
              library: LibraryOpt = None, as_json: JsonOpt = False) -> None:
    """Merge checkpoints into a PEFT adapter dir or an HF model dir."""
    from mashup.verbs import merge

    config = MergeConfig(method=method, weights=weights or None, density=density, lambda_=lambda_,
                         normalize=normalize, sign=sign, seed=seed, lora_mode=lora_mode)  # type: ignore[arg-type]
    exported = None
    if export_mergekit is not None:  # built first so an unsupported export fails before any merge work
        from mashup.library import Library
        from mashup.merging import export_mergekit_yaml

        records = [Library(library).get(i) for i in checkpoints]
        exported = export_mergekit_yaml(records, config, base or records[0].base_model)
    report = merge(checkpoints, config, out, library, base=base, data=DataConfig(data=data) if data else None)
    if exported is not None:
        export_mergekit.write_text(exported)
    emit(report.to_dict() if as_json else f"merged {len(checkpoints)} checkpoints with {method} into {out}", as_json)


@app.command("train")
def train_cmd(base: BaseOpt, data: DataOpt, out: Annotated[Path, typer.Option("--out")],
              init: Annotated[Optional[Path], typer.Option("--init", help="merged adapter/model dir to start from")] = None,
              mode: Annotated[str, typer.Option("--mode", help="lora | full")] = "lora",
              lr: Annotated[Optional[float], typer.Option("--lr")] = None,
              epochs: Annotated[float, typer.Option("--epochs")] = 1.0,
              batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
              micro_batch_size: Annotated[Optional[int], typer.Option("--micro-batch-size")] = None,
              max_steps: Annotated[Optional[int], typer.Option("--max-steps")] = None,
              eval_every: Annotated[Optional[int], typer.Option("--eval-every")] = None,
              seed: Annotated[int, typer.Option("--seed")] = 0,
              train: TrainFileOpt = None, test: TestFileOpt = None, test_size: TestSizeOpt = 0.2,
              scoring: ScoringOpt = "auto", max_length: MaxLenOpt = 384, max_train_examples: MaxTrainOpt = None,
              max_test_examples: MaxTestOpt = None, allow_pickle: PickleOpt = False, as_json: JsonOpt = False) -> None:
    """Fine-tune from a fresh LoRA / the base, or from --init; records an accuracy curve."""
    from mashup.verbs import train_model

    config = TrainConfig(mode=mode, lr=lr, epochs=epochs, batch_size=batch_size, micro_batch_size=micro_batch_size,  # type: ignore[arg-type]
                         max_steps=max_steps, eval_every=eval_every, seed=seed)
    data_config = _data(data, train, test, test_size, scoring, max_length, max_train_examples, max_test_examples)
    with training_bars(err) as stage:
        summary = train_model(base, data_config, config, out, init=init, progress=stage("model"),
                              allow_pickle=allow_pickle)
    points = summary.result.curve
    table = Table("step", "accuracy", "loss", "train seconds", title=f"trained into {summary.out}")
    for p in points:
        table.add_row(str(p.step), f"{p.accuracy:.4f}", f"{p.loss:.4f}", f"{p.seconds:.1f}")
    emit(summary.to_dict(), as_json, table)


@app.command("eval")
def eval_cmd(base: BaseOpt, data: DataOpt,
             adapter: Annotated[Optional[Path], typer.Option("--adapter")] = None,
             model: Annotated[Optional[Path], typer.Option("--model")] = None,
             split: Annotated[str, typer.Option("--split", help="test | train")] = "test",
             batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
             train: TrainFileOpt = None, test: TestFileOpt = None, test_size: TestSizeOpt = 0.2,
             scoring: ScoringOpt = "auto", max_length: MaxLenOpt = 384, max_test_examples: MaxTestOpt = None,
             allow_pickle: PickleOpt = False, as_json: JsonOpt = False) -> None:
    """Multiple-choice accuracy of the base, an adapter on it, or a full model."""
    from mashup.verbs import evaluate_model

    result = evaluate_model(base, _data(data, train, test, test_size, scoring, max_length, None, None),
                            adapter=adapter, model_dir=model, allow_pickle=allow_pickle,
                            config=EvalConfig(split=split, batch_size=batch_size, max_examples=max_test_examples))  # type: ignore[arg-type]
    emit(result.to_dict() if as_json else f"accuracy {result.accuracy:.4f}  loss {result.loss:.4f}  n {result.n}", as_json)


@app.command("run")
def run_cmd(base: Annotated[Optional[str], typer.Option("--base")] = None,
            data: Annotated[Optional[str], typer.Option("--data")] = None,
            out: Annotated[Optional[Path], typer.Option("--out")] = None, library: LibraryOpt = None,
            config_file: Annotated[Optional[Path], typer.Option("--config", help="RunConfig YAML (flags given override it)")] = None,
            baseline: Annotated[bool, typer.Option("--baseline", help="also train from scratch, same settings")] = False,
            k: Annotated[Optional[int], typer.Option("--k")] = None,
            samples: Annotated[Optional[int], typer.Option("--samples")] = None,
            metric: Annotated[Optional[str], typer.Option("--metric")] = None,
            merge_method: Annotated[Optional[str], typer.Option("--merge-method")] = None,
            density: Annotated[Optional[float], typer.Option("--density")] = None,
            lora_mode: Annotated[Optional[str], typer.Option("--lora-mode", help="ab | delta | concat")] = None,
            mode: Annotated[Optional[str], typer.Option("--mode")] = None,
            lr: Annotated[Optional[float], typer.Option("--lr")] = None,
            max_steps: Annotated[Optional[int], typer.Option("--max-steps")] = None,
            eval_every: Annotated[Optional[int], typer.Option("--eval-every")] = None,
            batch_size: Annotated[Optional[int], typer.Option("--batch-size")] = None,
            seed: Annotated[Optional[int], typer.Option("--seed")] = None,
            scoring: Annotated[Optional[str], typer.Option("--scoring")] = None,
            max_train_examples: MaxTrainOpt = None, max_test_examples: MaxTestOpt = None,
            no_register: Annotated[bool, typer.Option("--no-register", help="do not add the result to the library")] = False,
            as_json: JsonOpt = False) -> None:
    """Select, merge, train from the merge and evaluate; --baseline adds the from-scratch arm."""
    from mashup.run import run

    raw: dict[str, Any] = load_config(config_file, RunConfig).model_dump(by_alias=True) if config_file else {}
    overrides = {"base": base, "out": str(out) if out else None, "library": library, "baseline": baseline or None,
                 "add_to_library": False if no_register else None}
    raw.update({key: value for key, value in overrides.items() if value is not None})
    sections = {"data": {"data": data, "scoring": scoring, "max_train_examples": max_train_examples,
                         "max_test_examples": max_test_examples},
                "select": {"k": k, "samples": samples, "metric": metric, "seed": seed},
                "merge": {"method": merge_method, "density": density, "lora_mode": lora_mode, "seed": seed},
                "train": {"mode": mode, "lr": lr, "max_steps": max_steps, "eval_every": eval_every,
                          "batch_size": batch_size, "seed": seed}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update({key: v for key, v in values.items() if v is not None})
    for required in ("base", "out"):
        if not raw.get(required):
            raise MashupError(f"missing --{required}", None, f"pass --{required} or set it in --config")
    if not raw["data"].get("data"):
        raise MashupError("missing --data", None, "pass --data TARGET or set data.data in --config")
    with training_bars(err) as stage:
        summary = run(RunConfig.model_validate(raw), stage)
    emit(summary, as_json, None if as_json else _summary_table(summary))


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table("arm", "step-0 accuracy", "final accuracy", "train seconds", title=f"Mashup on {summary['target']}")
    for arm in ("mashup", "scratch"):
        if arm in summary:
            a = summary[arm]
            table.add_row(arm, f"{a['init_accuracy']:.4f}", f"{a['final_accuracy']:.4f}", f"{a['train_seconds']:.1f}")
    if "parity" in summary:
        p = summary["parity"]
        table.caption = f"steps to parity: 99% {p['p99']['step']}, 100% {p['p100']['step']}"
    return table


@app.command("demo")
def demo_cmd(out: Annotated[Optional[Path], typer.Option("--out", help="run dir (default ./runs/demo-<time>)")] = None,
             seeds: Annotated[Optional[list[int]], typer.Option("--seed", help="seeds to average (repeat)")] = None,
             as_json: JsonOpt = False) -> None:
    """Real SmolLM2-135M, real benchmarks, on a CPU: Mashup vs from-scratch, with a plot and a report."""
    from mashup.demo import run_demo

    report = run_demo(out, seeds=seeds or None, console=err)
    emit(report, as_json, None) if as_json else None


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet_third_party()
    try:
        app(standalone_mode=False)
    except MashupError as exc:
        err.print(f"[red]error:[/red] {exc.line()}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        err.print(f"[red]error:[/red] invalid value for '{field}': {first['msg']}; fix that option", soft_wrap=True)
        raise SystemExit(2) from None
    except (typer.Exit, typer.Abort) as exc:
        raise SystemExit(getattr(exc, "exit_code", 1)) from None
    except Exception as exc:  # click usage errors carry their own exit codes
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        raise
