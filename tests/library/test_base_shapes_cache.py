"""The shapes of the model a base's config.json builds are cached ($MASHUP_CACHE/base_shapes.sqlite) under that
config as transformers reads it and the installed transformers: a later add replays a build's result without
importing a model class, anything else builds again, and a cache that cannot be used only warns."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import mashup.model_checks as model_checks
from mashup.library import Library, shapes_cache
from mashup.library.base_shapes import base_module_shapes

CACHE_FILE = "base_shapes.sqlite"
CACHE_PATH = shapes_cache.cache_path  # bound before any fixture points the cache elsewhere


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private MASHUP_CACHE (the identity and base shapes caches), where the shapes cache is."""
    monkeypatch.setenv("MASHUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shapes_cache, "cache_path", CACHE_PATH)
    return tmp_path / "cache"


@pytest.fixture()
def built(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The model dirs whose config's model was built on meta (not replayed from the cache)."""
    dirs: list[Path] = []
    real = model_checks.model_on_meta
    monkeypatch.setattr(model_checks, "model_on_meta", lambda model_dir: dirs.append(Path(model_dir))
                        or real(model_dir))
    return dirs


def _config_only(tiny_base: Path, dst: Path, **changes: object) -> Path:
    """A base dir holding only the tiny base's config.json (all a meta build reads), with ``changes``."""
    dst.mkdir(parents=True)
    config = json.loads((tiny_base / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **changes}))
    return dst


def _the_build(model_dir: Path, build: Callable[[Path], Any] = model_checks.model_on_meta
               ) -> list[tuple[str, list[int]]]:
    """What a build gives (``build``: the real one, bound before ``built`` counts the builds)."""
    return [(name, list(t.shape)) for name, t in build(model_dir).state_dict().items()]


def test_a_later_add_replays_the_build(tmp_path: Path, tiny_base: Path, tiny_loras: list[Path],
                                       built: list[Path], isolated_cache: Path) -> None:
    first = Library(tmp_path / "lib").add(tiny_loras[:2], base=str(tiny_base))
    again = Library(tmp_path / "lib2").add(tiny_loras[:2], base=str(tiny_base))
    assert built == [tiny_base], "the second add replays the first's build"
    assert [r.id for r in again] == [r.id for r in first] and (isolated_cache / CACHE_FILE).is_file()


def test_a_hit_gives_what_the_build_gave(tmp_path: Path, tiny_base: Path, built: list[Path]) -> None:
    base = _config_only(tiny_base, tmp_path / "base")
    stored, replayed = base_module_shapes(str(base)), base_module_shapes(str(base))
    assert len(built) == 1
    assert list(replayed.items()) == list(stored.items()) == _the_build(base), "names, shapes and order"


def test_a_changed_config_misses_and_a_reformatted_one_hits(tmp_path: Path, tiny_base: Path,
                                                             built: list[Path]) -> None:
    base = _config_only(tiny_base, tmp_path / "base")
    narrow = base_module_shapes(str(base))
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    wide = base_module_shapes(str(base))
    assert len(built) == 2 and wide == dict(_the_build(base)) != narrow
    assert wide["model.layers.0.mlp.up_proj.weight"] == [96, 32]
    (base / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}, indent=4))  # same JSON
    assert base_module_shapes(str(base)) == wide and len(built) == 2


class _Reinstalled:
    """The installed transformers distribution, as if another version or another build of it were installed."""

    def __init__(self, dist: metadata.Distribution, version: str | None, record_line: str) -> None:
        self._dist, self._record_line = dist, record_line
        self.version = version or dist.version

    def read_text(self, name: str) -> str | None:
        text = self._dist.read_text(name)
        return f"{text}{self._record_line}" if name == "RECORD" and text else text

    def locate_file(self, path: str) -> object:
        return self._dist.locate_file(path)


@pytest.mark.parametrize(("version", "record_line"), [("0.0.1", ""), (None, "transformers/patched.py,,1\n")],
                         ids=["another version", "another build of this version"])
def test_another_transformers_misses(tmp_path: Path, tiny_base: Path, built: list[Path],
                                     monkeypatch: pytest.MonkeyPatch, version: str | None, record_line: str) -> None:
    base = _config_only(tiny_base, tmp_path / "base")
    shapes = base_module_shapes(str(base))
    real = metadata.distribution
    monkeypatch.setattr(metadata, "distribution", lambda name: _Reinstalled(real(name), version, record_line)
                        if name == "transformers" else real(name))
    if version is not None:  # as a process started after the upgrade has it loaded
        monkeypatch.setattr(sys.modules["transformers"], "__version__", version)
    assert base_module_shapes(str(base)) == shapes and len(built) == 2
    assert base_module_shapes(str(base)) == shapes and len(built) == 2, "cached under that one in turn"


def test_a_transformers_upgraded_under_a_running_process_is_not_cached(tmp_path: Path, tiny_base: Path,
                                                                         built: list[Path],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The metadata on disk says 0.0.1 while the process builds with the version it imported: stored under the new
    key, the old code's shapes would be replayed to later processes."""
    base = _config_only(tiny_base, tmp_path / "base")
    real = metadata.distribution
    monkeypatch.setattr(metadata, "distribution", lambda name: _Reinstalled(real(name), "0.0.1", "")
                        if name == "transformers" else real(name))
    assert base_module_shapes(str(base)) == base_module_shapes(str(base)) and len(built) == 2


def test_a_config_naming_other_configuration_files_is_not_cached(tmp_path: Path, tiny_base: Path,
                                                                  built: list[Path]) -> None:
    """transformers may read config.<version>.json in its place, which the key does not cover."""
    base = _config_only(tiny_base, tmp_path / "base")
    config = json.loads((base / "config.json").read_text())
    (base / "config.4.0.0.json").write_text(json.dumps(config))
    (base / "config.json").write_text(json.dumps({**config, "configuration_files": ["config.4.0.0.json"]}))
    shapes = base_module_shapes(str(base))
    assert shapes is not None and base_module_shapes(str(base)) == shapes and len(built) == 2


def test_a_transformers_imported_from_elsewhere_is_not_cached(tmp_path: Path, tiny_base: Path, built: list[Path],
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               isolated_cache: Path) -> None:
    """An editable install or a checkout on the path: its code changes under one version and RECORD."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: SimpleNamespace(
        origin=str(tmp_path / "src" / "transformers" / "__init__.py")) if name == "transformers"
        else real(name, *args))
    base = _config_only(tiny_base, tmp_path / "base")
    assert base_module_shapes(str(base)) == base_module_shapes(str(base)) and len(built) == 2
    assert not (isolated_cache / CACHE_FILE).exists()


def test_a_config_that_does_not_build_is_not_stored(tmp_path: Path, tiny_base: Path, built: list[Path],
                                                     isolated_cache: Path) -> None:
    base = _config_only(tiny_base, tmp_path / "base", model_type="no-such-architecture")
    assert base_module_shapes(str(base)) is None and base_module_shapes(str(base)) is None
    assert len(built) == 2 and not (isolated_cache / CACHE_FILE).exists()


@pytest.mark.parametrize("cache", ["under a file", "not a database", "an unreadable entry"])
def test_a_cache_that_cannot_be_used_only_warns(tmp_path: Path, tiny_base: Path, tiny_loras: list[Path],
                                                built: list[Path], monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture, cache: str) -> None:
    root = tmp_path / "cache"
    if cache == "under a file":
        (tmp_path / "file").write_text("")
        root = tmp_path / "file" / "cache"
        monkeypatch.setenv("MASHUP_CACHE", str(root))
    elif cache == "not a database":
        root.mkdir()
        (root / CACHE_FILE).write_bytes(b"not sqlite " * 100)
    else:
        base_module_shapes(str(tiny_base))
        import sqlite3

        with sqlite3.connect(root / CACHE_FILE) as conn:
            conn.execute("UPDATE module_shapes SET shapes = '{\"a\": \"b\"}'")
    with caplog.at_level(logging.WARNING):
        records = Library(tmp_path / "lib").add(tiny_loras[:1], base=str(tiny_base))
    assert len(records) == 1 and built.count(tiny_base) == (2 if cache == "an unreadable entry" else 1)
    assert any("base shapes cache" in r.getMessage() or "base's shapes" in r.getMessage() for r in caplog.records)


_ADD = """
import sys
from mashup.library import Library, shapes_cache
records = Library(sys.argv[1]).add([sys.argv[2]], base=sys.argv[3])
print(len(records), sorted(m for m in sys.modules if m.startswith("transformers.models.")))
"""


def test_a_hit_imports_no_model_class(tmp_path: Path, tiny_base: Path, tiny_loras: list[Path],
                                      isolated_cache: Path) -> None:
    """Each add in a fresh process: the first builds the model (importing its class), the second replays it."""
    env = {**os.environ, "MASHUP_CACHE": str(isolated_cache), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.run([sys.executable, "-c", _ADD, str(tmp_path / f"lib{i}"), str(tiny_loras[0]),
                            str(tiny_base)], env=env, capture_output=True, text=True, check=True, timeout=300)
            for i in range(2)]
    assert "transformers.models.llama.modeling_llama" in runs[0].stdout, runs[0].stdout
    assert runs[1].stdout.strip() == "1 []", runs[1].stdout + runs[1].stderr
