"""Fast library fixtures: adapter dirs made by copying a tiny adapter with seeded noise (no model built), and the
one-line refusal a bad one gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mashup.errors import CheckpointError
from mashup.library import Library


def noisy_copy(src: Path, dst: Path, seed: int, **config_changes) -> Path:
    """A copy of the LoRA adapter dir ``src`` with distinct weights (same shapes); config keys overridable."""
    dst.mkdir(parents=True)
    config = json.loads((src / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**config, **config_changes}))
    generator = torch.Generator().manual_seed(seed)
    tensors = load_file(src / "adapter_model.safetensors")
    save_file({name: t + 0.01 * torch.randn(t.shape, generator=generator) for name, t in tensors.items()},
              dst / "adapter_model.safetensors")
    return dst


def many_adapters(src: Path, root: Path, n: int, offset: int = 0) -> list[Path]:
    return [noisy_copy(src, root / f"a{offset + i:04d}", seed=1000 + offset + i) for i in range(n)]


def scanned_library(tmp_path: Path, adapter: Path, n: int) -> tuple[Path, Library, list]:
    """``n`` adapters under ``tmp_path/runs``, registered by a recursive add: (the dir, the library, the records)."""
    root = tmp_path / "runs"
    many_adapters(adapter, root, n)
    library = Library(tmp_path / "lib")
    return root, library, library.add([root], recursive=True)


def refused(library: Library, paths, match: str, **kwargs) -> CheckpointError:
    """``library.add(paths)`` raises a one-line CheckpointError and registers nothing."""
    with pytest.raises(CheckpointError, match=match) as caught:
        library.add(paths, **kwargs)
    assert "\n" not in str(caught.value)
    assert library.list() == []
    return caught.value
