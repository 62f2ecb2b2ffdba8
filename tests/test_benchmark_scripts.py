"""Every benchmark script still imports: a name it takes from mashup that no longer exists fails here, not on the
next person to run it. Nothing is run: each script's work sits behind ``if __name__ == "__main__"``."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def _import_by_path(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_benchmark_script_imports(script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # run as a script, a benchmark finds its sibling modules (`from selection_library import ...`) on sys.path[0]
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    before = set(sys.modules)
    try:
        _import_by_path(script)
    finally:
        # siblings imported by their bare names (selection, selection_library, ...) must not leak into other tests
        for name in set(sys.modules) - before:
            if Path(getattr(sys.modules[name], "__file__", None) or "").parent == BENCHMARKS:
                del sys.modules[name]


def test_benchmark_scripts_are_found() -> None:
    assert BENCHMARKS / "lora_modes.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_every_name_a_benchmark_takes_from_mashup_exists(script: Path) -> None:
    """Also the imports inside functions, which importing the script does not run."""
    import ast
    import importlib

    tree = ast.parse(script.read_text(), filename=str(script))
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
               and node.module.split(".")[0] == "mashup"]
    for node in imports:
        module = importlib.import_module(node.module)  # type: ignore[arg-type]
        missing = [alias.name for alias in node.names if not hasattr(module, alias.name)
                   and importlib.util.find_spec(f"{node.module}.{alias.name}") is None]
        assert not missing, f"{script.name}:{node.lineno}: {node.module} has no {', '.join(missing)}"
