"""Models on the Hugging Face Hub: what spells one, and fetching one with a one-line error.

Kept apart from ``mashup.models`` (torch, transformers) and ``mashup.library`` so that either, and the
experiment's checks, can use it without importing the other.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mashup.errors import CheckpointError, MashupError, short_reason
from mashup.io.files import SAFETENSORS_NAMES, explicit_weights_name, loaded_weight_files

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


def check_hub_weights(repo_id: str, snapshot: Path) -> None:
    """Refuse a Hub model whose repo holds no weights the load could use (``fetch_hub_model`` fetches no pickles,
    and transformers loads the file config.json's ``transformers_weights`` names, else model.safetensors or its
    index, from the top level), before the experiment's work. Without the repo's file list (offline, Hub out of
    reach) the local HF cache's ``snapshot`` (where config.json came from) is read instead: one holding weights,
    none of them loadable, is refused as the load would refuse it; one holding none, or an index without all its
    shards, passes (the load may fetch), but in offline mode, where nothing can be fetched."""
    import huggingface_hub

    listed = list_hub_files(repo_id)
    names = listed if listed is not None else [str(p.relative_to(snapshot)) for p in snapshot.rglob("*")
                                               if p.is_file()]
    top_level = [name for name in names if "/" not in name]
    explicit = explicit_weights_name(snapshot)
    where = f"Hub repo {repo_id}" if listed is not None else f"the cached snapshot of Hub repo {repo_id} ({snapshot})"
    if set(top_level) & ({explicit} if isinstance(explicit, str) else set(SAFETENSORS_NAMES)):
        if "adapter_config.json" in top_level:  # fetched too (*.json): the load would refuse it after the download
            raise CheckpointError("holds a model's weights beside an adapter (adapter_config.json), which "
                                  "transformers loads as the model with the adapter applied on top", where,
                                  "save_pretrained the model alone to a local dir and point base at that dir")
        if listed is None and huggingface_hub.is_offline_mode():
            _check_cached_shards(snapshot, where)
        return
    safetensors, pickles = ([n for n in top_level if n.endswith(suffix)] for suffix in (".safetensors", ".bin"))
    if listed is None and not safetensors and not pickles:
        if huggingface_hub.is_offline_mode():  # nothing can be fetched: the load would fail after the work
            raise CheckpointError("its weights are not in the local Hugging Face cache, and the Hub is in offline mode",
                                  where, "unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to download them, or point "
                                  "base at a local model dir")
        return
    if safetensors:
        raise CheckpointError(f"transformers loads none of its safetensors ({', '.join(sorted(safetensors)[:3])}): "
                              f"it reads {explicit if isinstance(explicit, str) else ' or '.join(SAFETENSORS_NAMES)}",
                              where, "save_pretrained the model to a local dir and point base at that dir")
    if pickles:
        raise CheckpointError("only pickle (.bin) weights found (a Hub base is fetched as safetensors only)", where,
                              "convert them to safetensors (load the model and save_pretrained it to a local dir: "
                              "transformers writes safetensors) and point base at that dir")
    raise CheckpointError("no weight files (*.safetensors) found", where,
                          "point base at a Hub id whose repo holds safetensors weights, a local HF model dir or a "
                          "named model")


def _check_cached_shards(snapshot: Path, where: str) -> None:
    """Offline, a cached snapshot's index must find every shard it names there (a download stopped part-way leaves
    the index and some shards): the load could fetch none of the others, and would fail after the work."""
    try:
        loaded_weight_files(snapshot)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc.what}, and the Hub is in offline mode", where,
                              "unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to download the rest, or point base "
                              "at a local model dir") from None
