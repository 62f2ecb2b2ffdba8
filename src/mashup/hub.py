"""Models on the Hugging Face Hub: what spells one, and fetching one with a one-line error.

Kept apart from ``mashup.models`` (torch, transformers) and ``mashup.library`` so that either, and the
experiment's checks, can use it without importing the other.
"""

from __future__ import annotations

from pathlib import Path

from mashup.errors import MashupError, short_reason

_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".json", ".jsonl", ".yaml", ".yml")


def is_hub_id(name: str) -> bool:
    """``namespace/name`` as the Hub spells a model repo (dots allowed: ``Qwen/Qwen2.5-0.5B``), not a path: one
    that starts like a path or ends like a weights or data file is taken for a missing local file."""
    if name.count("/") != 1 or name.startswith((".", "/", "~")) or name.lower().endswith(_FILE_SUFFIXES):
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def fetch_hub_model(repo_id: str, *, config_only: bool = False) -> Path:
    """The Hub model's files (the local HF cache's copy when there is one), or only its config.json (to check it
    can be had without downloading the weights); a failed download is one line."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["config.json"] if config_only else ["*.json", "*.safetensors", "*.model", "*.txt"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:  # offline, unknown id, gated, ...
        raise MashupError(f"cannot get base model '{repo_id}' from the Hugging Face Hub ({short_reason(str(exc))})",
                          None,
                          "check the id and the network, or pass a local model dir or a named model "
                          "(`mashup models list`)") from None
