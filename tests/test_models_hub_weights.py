"""The base preflight (``check_base_available``) of a Hub model reads its repo's file list: a repo a load could not
use (pickles only, no safetensors transformers loads) is refused before any work; a repo that cannot be listed is
judged by the HF cache's snapshot, and passes where that holds no weights. The Hub is never reached:
huggingface_hub's download and listing are replaced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from huggingface_hub.errors import OfflineModeIsEnabled

from mashup.errors import CheckpointError
from mashup.models import check_base_available

REPO = "nobody/some-model"


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A Hub whose repo holds config.json and whatever ``listed`` is set to; records what each call asked."""
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama"}))
    state: dict[str, Any] = {"listed": [], "downloads": [], "listings": []}

    def snapshot_download(repo_id: str, allow_patterns: list[str] | None = None,
                          ignore_patterns: list[str] | None = None, **kwargs: object) -> str:
        state["downloads"].append(allow_patterns)
        state["ignored"] = ignore_patterns
        return str(snapshot)

    def list_repo_files(repo_id: str, **kwargs: object) -> list[str]:
        state["listings"].append(repo_id)
        listed = state["listed"]
        if isinstance(listed, Exception):
            raise listed
        return listed

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return state


def test_a_hub_base_with_only_pickle_weights_is_refused_in_one_line(hub):
    hub["listed"] = ["config.json", "pytorch_model.bin", "tokenizer.json", "README.md"]
    with pytest.raises(CheckpointError) as caught:
        check_base_available(REPO)
    line = str(caught.value)
    assert line.startswith("only pickle (.bin) weights found") and f"in Hub repo {REPO}" in line
    assert "convert them to safetensors" in line and len(line.splitlines()) == 1
    assert hub["downloads"] == [["config.json"]] and hub["listings"] == [REPO]  # listed, no weights fetched


def test_a_hub_base_without_top_level_safetensors_is_refused(hub):
    """The load reads the snapshot's top level, so safetensors only in a subfolder do not make a loadable base."""
    hub["listed"] = ["config.json", "onnx/model.safetensors", "model.gguf"]
    with pytest.raises(CheckpointError, match=f"no weight files \\(\\*.safetensors\\) found in Hub repo {REPO}"):
        check_base_available(REPO)


@pytest.mark.parametrize("listed", [["config.json", "model.safetensors"],
                                    ["config.json", "pytorch_model.bin", "model-00001-of-00002.safetensors",
                                     "model-00002-of-00002.safetensors", "model.safetensors.index.json"]])
def test_a_hub_base_with_safetensors_passes(hub, listed):
    hub["listed"] = listed
    check_base_available(REPO)
    assert hub["listings"] == [REPO]


@pytest.mark.parametrize("failure", [OfflineModeIsEnabled("offline"), ConnectionError("Name or service not known"),
                                     TimeoutError("timed out"), RuntimeError("a transport error of the HTTP client")])
def test_a_hub_base_whose_files_cannot_be_listed_passes_as_before(hub, failure):
    """No listing, no refusal: config.json came (maybe from the HF cache), and the load decides on the weights."""
    hub["listed"] = failure
    check_base_available(REPO)
    assert hub["listings"] == [REPO]


def test_offline_mode_lists_nothing(hub, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub["listed"] = ["config.json", "pytorch_model.bin"]
    (Path(huggingface_hub.snapshot_download(REPO)) / "model.safetensors").write_bytes(b"")
    check_base_available(REPO)
    assert hub["listings"] == []


@pytest.mark.parametrize("cached", [[], ["consolidated.safetensors"]])
def test_offline_a_cached_snapshot_without_weights_the_load_reads_is_refused_up_front(hub, monkeypatch, cached):
    """HF_HUB_OFFLINE: nothing can be fetched, so a snapshot holding config.json only (what the preflight's own
    config fetch leaves) or only mistral-inference's copy would fail at the load, after the work."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    snapshot = Path(huggingface_hub.snapshot_download(REPO))
    for name in cached:
        (snapshot / name).write_bytes(b"")
    said = ("transformers loads none of its safetensors" if cached
            else "not in the local Hugging Face cache, and the Hub is in offline mode")
    with pytest.raises(CheckpointError, match=said) as caught:
        check_base_available(REPO)
    assert caught.value.where == f"the cached snapshot of Hub repo {REPO} ({snapshot})"


def test_mistral_inferences_copy_of_the_weights_is_not_taken_for_them(hub):
    """Mistral's repos hold consolidated.safetensors (mistral-inference's names) beside transformers' shards: a
    repo with only that copy has no weights transformers loads."""
    hub["listed"] = ["config.json", "consolidated.safetensors", "pytorch_model.bin"]
    with pytest.raises(CheckpointError, match=r"transformers loads none of its safetensors \(consolidated"):
        check_base_available(REPO)


def test_a_hub_base_is_fetched_without_mistral_inferences_copy(hub):
    """transformers loads the shards, and a base's identity hashes only those: the 14 GB copy is not fetched."""
    from mashup.hub import fetch_hub_model

    fetch_hub_model(REPO)
    assert hub["downloads"][-1] == ["*.json", "*.safetensors", "*.model", "*.txt"]
    assert hub["ignored"] == ["consolidated*"]
    fetch_hub_model(REPO, config_only=True)
    assert hub["downloads"][-1] == ["config.json"]


@pytest.mark.parametrize("failure", [None, OfflineModeIsEnabled("offline"), ConnectionError("unreachable")])
def test_a_cached_snapshot_holding_only_pickles_is_refused_without_a_listing(hub, monkeypatch, failure):
    """Offline (or the Hub out of reach) the repo cannot be listed: the HF cache's snapshot config.json came from
    is read instead, and one whose weights are pickles only is refused up front, not after the work."""
    if failure is None:
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub["listed"] = failure
    snapshot = Path(hub_snapshot := huggingface_hub.snapshot_download(REPO))
    (snapshot / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="only pickle") as caught:
        check_base_available(REPO)
    assert caught.value.where == f"the cached snapshot of Hub repo {REPO} ({hub_snapshot})"
    (snapshot / "model.safetensors").write_bytes(b"")
    check_base_available(REPO)


def test_safetensors_transformers_does_not_load_are_refused(hub):
    """transformers reads model.safetensors or its index, not a variant (model.fp16.safetensors) nor shards without
    their index (what the load would then refuse)."""
    hub["listed"] = ["config.json", "model.fp16.safetensors", "model-00001-of-00002.safetensors"]
    with pytest.raises(CheckpointError, match="transformers loads none of its safetensors"):
        check_base_available(REPO)


def test_the_file_a_configs_transformers_weights_names_is_the_one_looked_for(hub):
    snapshot = Path(huggingface_hub.snapshot_download(REPO))
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama", "transformers_weights": "w.safetensors"}))
    hub["listed"] = ["config.json", "w.safetensors"]
    check_base_available(REPO)
    hub["listed"] = ["config.json", "model.safetensors"]
    with pytest.raises(CheckpointError, match="it reads w.safetensors"):
        check_base_available(REPO)


def test_a_hub_repo_holding_an_adapter_beside_the_model_is_refused_before_the_download(hub):
    """Its adapter_config.json is fetched with the *.json files: transformers would load the model with the
    adapter on top, and the load refuses such a dir, after the download."""
    hub["listed"] = ["config.json", "model.safetensors", "adapter_config.json", "adapter_model.safetensors"]
    with pytest.raises(CheckpointError, match="holds a model's weights beside an adapter") as caught:
        check_base_available(REPO)
    assert caught.value.where == f"Hub repo {REPO}" and hub["downloads"] == [["config.json"]]


def test_offline_a_cached_snapshot_missing_shards_its_index_names_is_refused_up_front(hub, monkeypatch):
    """A download stopped part-way leaves the index and some shards in the HF cache: offline, the load could fetch
    none of the others, so the preflight refuses it before the work; online the load fetches them."""
    snapshot = Path(huggingface_hub.snapshot_download(REPO))
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (snapshot / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shards[0], "b": shards[1]}}))
    (snapshot / shards[0]).write_bytes(b"")
    hub["listed"] = ConnectionError("unreachable")
    check_base_available(REPO)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match=f"shard {shards[1]} named by model.safetensors.index.json is missing "
                       r"\(1 missing\), and the Hub is in offline mode") as caught:
        check_base_available(REPO)
    assert caught.value.where == f"the cached snapshot of Hub repo {REPO} ({snapshot})"
    assert "unset HF_HUB_OFFLINE" in caught.value.fix
    (snapshot / shards[1]).write_bytes(b"")
    check_base_available(REPO)
