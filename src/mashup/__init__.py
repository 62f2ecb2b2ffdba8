"""Mashup Learning: faster, better fine-tuning by recycling past checkpoints (arXiv 2603.10156).

The CLI verbs are plain functions here too::

    import mashup
    ranking = mashup.select("smollm2-135m", mashup.DataConfig(data="arc_easy"), mashup.SelectConfig(), "~/lib")
"""

__version__ = "0.1.0"

from mashup.config import (  # noqa: E402
    DataConfig, EvalConfig, MergeConfig, RunConfig, SelectConfig, TrainConfig, load_config, save_config,
)
from mashup.errors import CheckpointError, DataError, LibraryError, MashupError, MergeError  # noqa: E402
from mashup.library import CheckpointRecord, Library  # noqa: E402
from mashup.run import run  # noqa: E402
from mashup.verbs import evaluate_model, merge, select, train_model  # noqa: E402

__all__ = [
    "CheckpointError", "CheckpointRecord", "DataConfig", "DataError", "EvalConfig", "Library", "LibraryError",
    "MashupError", "MergeConfig", "MergeError", "RunConfig", "SelectConfig", "TrainConfig", "evaluate_model",
    "load_config", "merge", "run", "save_config", "select", "train_model",
]
