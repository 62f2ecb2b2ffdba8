"""The `mashup switch` verbs as plain functions: generate a response, evaluate into a dir."""

from __future__ import annotations

from pathlib import Path

from mashup.config import save_config
from mashup.errors import MashupError
from mashup.io import atomic_output_dir, write_json
from mashup.switch.candidates import load_candidates
from mashup.switch.config import SwitchConfig, SwitchEvalConfig
from mashup.switch.evaluate import ProgressFn, evaluate_switch
from mashup.switch.generation import Plan, SwitchTrace, fixed, switch_generate
from mashup.switch.report import markdown_table, plot_writers
from mashup.switch.switcher import load_switcher
from mashup.switch.train import switcher_base
from mashup.provenance import write_version


def generate(config: SwitchConfig, prompt: str, *, writer: str | None = None) -> SwitchTrace:
    """One response: the switcher picks the writers (or ``writer``, a candidate name, writes it all)."""
    if writer is not None:
        candidates = load_candidates(config.candidates, config.library, precision=config.precision)
        names = [c.name for c in candidates]
        if writer not in names:
            raise MashupError(f"no candidate named '{writer}'", None, f"use one of: {', '.join(names)}")
        plan = Plan(config.generation.model_copy(update={"aligned_ends": False}), None)
        return switch_generate(candidates, prompt, fixed(names.index(writer)), plan)
    # the switcher first: an adapter trained for other candidates is refused before they load
    switcher = load_switcher(switcher_base(config), len(config.candidates), adapter=config.switcher.adapter,
                             top_p=config.switcher.top_p, seed=config.generation.seed, precision=config.precision,
                             candidates=config.candidates)
    candidates = load_candidates(config.candidates, config.library, precision=config.precision)
    return switch_generate(candidates, prompt, switcher, Plan(config.generation, config.aligned_index()),
                           chooser_cost=switcher.cost)


def evaluate_into(config: SwitchConfig, eval_config: SwitchEvalConfig, out: str | Path, *,
                  progress: ProgressFn | None = None, overwrite: bool = False) -> dict:
    """Run the eval and write results.json, report.md, writers.png, the configs and versions into ``out``."""
    with atomic_output_dir(Path(out), overwrite=overwrite) as tmp:
        result = evaluate_switch(config, eval_config, progress=progress)
        write_json(tmp / "results.json", result)
        (tmp / "report.md").write_text(markdown_table(result))
        plot_writers(result, tmp / "writers.png", eval_config.plot_examples)
        save_config(config, tmp / "switch_config.yaml")
        save_config(eval_config, tmp / "eval_config.yaml")
        write_version(tmp)
    return result
