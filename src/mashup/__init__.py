"""Mashup Learning: faster, better fine-tuning by recycling past checkpoints (arXiv 2603.10156).

The CLI verbs are plain functions here too::

    import mashup
    ranking = mashup.select("smollm2-135m", mashup.DataConfig(data="arc_easy"), mashup.SelectConfig(), "~/lib")

Names are imported on first use, so ``import mashup`` (and ``mashup --help``) stays fast: torch,
transformers and peft load only when a verb runs.
"""

from __future__ import annotations

from mashup.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "DataConfig": "mashup.config", "EvalConfig": "mashup.config", "MergeConfig": "mashup.config",
    "RunConfig": "mashup.config", "SelectConfig": "mashup.config", "TrainConfig": "mashup.config",
    "load_config": "mashup.config", "save_config": "mashup.config",
    "CheckpointError": "mashup.errors", "DataError": "mashup.errors", "LibraryError": "mashup.errors",
    "MashupError": "mashup.errors", "MergeError": "mashup.errors",
    "CheckpointRecord": "mashup.library", "Library": "mashup.library",
    "run": "mashup.run",
    "evaluate_model": "mashup.verbs", "merge": "mashup.verbs", "select": "mashup.verbs", "train_model": "mashup.verbs",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
