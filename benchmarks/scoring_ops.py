"""Operations a scoring run dispatches: the base alone, one adapter through PEFT, G adapters in LoRA slots.

On a GPU a small model's forward is bound by launching its kernels, not by its matmuls (docs/selection.md,
"Measured on an H200"), so the number of kernels a forward launches sets its cost there. This counts
the aten operations dispatched below autocast (its casts included), split into kernels and views
(views launch nothing), for one scoring run over the same sample in fp32 and under bf16 autocast:

    python benchmarks/scoring_ops.py --slots 4 --questions 8

The adapters are random rank-8 LoRA adapters of the base (``selection_overhead.random_adapters``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mashup.config import DataConfig
from mashup.data.schema import sample
from mashup.data.target import load_target
from mashup.evaluation import ScoringPlan
from mashup.library import inspect_checkpoint
from mashup.library.base_shapes import BaseShapes
from mashup.models import attach_adapter, load_model
from mashup.selection.slots import LoRASlots, SlotLayout
from mashup.workspace import open_workspace
from selection_overhead import random_adapters  # benchmarks/selection_overhead.py


class OperationCount(TorchDispatchMode):
    """Counts the aten operations dispatched inside it, by name, views apart."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[tuple[bool, str]] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[(func.is_view, str(func.overloadpacket))] += 1
        return func(*args, **(kwargs or {}))

    def summary(self) -> dict:
        kernels = {name: n for (view, name), n in self.counts.most_common() if not view}
        return {"kernels": sum(kernels.values()), "views": sum(n for (view, _), n in self.counts.items() if view),
                "by_name": kernels}


def count(run: Callable[[], object]) -> dict:
    with OperationCount() as counter:
        run()
    return counter.summary()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--target", default="commonsense_qa", help="a named task or a multiple-choice JSONL file")
    parser.add_argument("--questions", type=int, default=8, help="questions each adapter is scored on")
    parser.add_argument("--slots", type=int, default=4, help="adapters sharing the slots' forward")
    parser.add_argument("--batch-size", type=int, default=256, help="questions per batch (as in selection_library.py)")
    parser.add_argument("--dir", type=Path, default=Path.home() / ".cache/mashup/selection-overhead")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    data = DataConfig(data=args.target)
    workspace = open_workspace(args.base, data)
    target = load_target(data)
    requests = workspace.encode(sample(target.train, args.questions, 0), target.template)
    adapters = random_adapters(workspace, args.dir / workspace.base_dir.name / "distinct", args.slots)
    base_shapes = BaseShapes()  # the base's model built once for all
    records = [inspect_checkpoint(path, base_shapes=base_shapes) for path in adapters]
    for i, record in enumerate(records):
        record.id = f"a{i}"
    result = {"settings": {k: str(v) for k, v in vars(args).items()}}
    for bf16 in (False, True):
        settings = dataclasses.replace(workspace.settings(args.batch_size), device=torch.device("cpu"), bf16=bf16)
        plan = ScoringPlan(requests, settings, with_accuracy=False)
        base = load_model(workspace.base_dir, check_values=False).eval()
        # unchecked values, as the naive loop reads them (and as these loads were timed before checks were the default)
        peft = attach_adapter(load_model(workspace.base_dir, check_values=False), adapters[0], trainable=False,
                              check_values=False).eval()
        slotted = load_model(workspace.base_dir, check_values=False).eval()
        slots = LoRASlots(slotted, SlotLayout.of(records[0]), len(records), torch.bfloat16 if bf16 else None)
        for i, (record, path) in enumerate(zip(records, adapters)):
            slots.load_adapter(i, path, record.lora_scale)
        slots.activate(len(records))
        counts = {"base": count(lambda: plan.run(base)), "peft, 1 adapter": count(lambda: plan.run(peft)),
                  f"slots, {len(records)} adapters": count(lambda: plan.run(slotted, len(records)))}
        precision = settings.precision
        result[precision] = counts
        print(f"{precision}: {len(requests)} questions per adapter, {len(plan.batches)} batch(es)", flush=True)
        for label, got in counts.items():
            top = ", ".join(f"{name.removeprefix('aten.')} {n}" for name, n in list(got["by_name"].items())[:6])
            print(f"  {label:>20}: {got['kernels']:5d} kernels, {got['views']:5d} views ({top})", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
