"""Models on the Hugging Face Hub: what spells one, and fetching one with a one-line error.

Kept apart from ``mashup.models`` (torch, transformers) and ``mashup.library`` so that either, and the
experiment's checks, can use it without importing the other.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mashup.errors import MashupError, short_reason

logger = logging.getLogger(__name__)

_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".json", ".jsonl", ".yaml", ".yml")
OTHER_WEIGHT_COPIES = "consolidated*"  # Mistral's repos: the weights again under mistral-inference's names


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
        # transformers neither fetches nor loads that copy, nor does a base's identity hash it (a repo with only
        # that copy has no weights a load could use, which the preflight says)
        return Path(snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=[OTHER_WEIGHT_COPIES]))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:  # offline, unknown id, gated, ...
        raise MashupError(f"cannot get base model '{repo_id}' from the Hugging Face Hub ({short_reason(str(exc))})",
                          None,
                          "check the id and the network, or pass a local model dir or a named model "
                          "(`mashup models list`)") from None


def list_hub_files(repo_id: str) -> list[str] | None:
    """The paths of the files in the Hub model's repo (its default revision, as ``fetch_hub_model`` fetches), listed
    without downloading any; None when no listing can be had: offline mode, or the Hub out of reach."""
    import huggingface_hub

    if huggingface_hub.is_offline_mode():  # HF_HUB_OFFLINE: no request at all, as snapshot_download makes none
        return None
    try:
        return huggingface_hub.list_repo_files(repo_id)
    # any failure: a dropped network or a proxy raises the errors of whichever HTTP client this huggingface_hub
    # is built on, none of them an OSError; the listing only adds an early check, so the caller goes without it
    except Exception as exc:
        logger.debug("cannot list the files of Hub model %s: %s", repo_id, short_reason(str(exc)))
        return None
