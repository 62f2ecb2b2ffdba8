"""`mashup run` killed mid-training, or failing at registration: nothing finished-looking is left, the catalog
is unchanged, and the next run with the same --out succeeds and cleans up."""

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from mashup.atomic_dir import TMP_MARK
from mashup.errors import LibraryError
from mashup.library import Library
from tests.test_cli import run_cli

SRC = Path(__file__).resolve().parents[1] / "src"


def _run_args(tiny_base, mc_file, lib, out, steps):
    return ["run", "--base", tiny_base, "--data", mc_file, "--scoring", "letter", "--library", lib, "--out", out,
            "--samples", "4", "--batch-size", "4", "--max-steps", str(steps), "--eval-every", str(steps),
            "--max-test-examples", "4"]


def _wait_for(pattern_root: Path, pattern: str, proc: subprocess.Popen, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(pattern_root.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("training did not start in time")


def _catalog_state(lib: Path) -> tuple[bytes, bytes]:
    wal = lib / "catalog.sqlite-wal"
    return (lib / "catalog.sqlite").read_bytes(), wal.read_bytes() if wal.exists() else b""


def test_kill_9_mid_training_leaves_nothing_and_the_next_run_succeeds(tmp_path, tiny_base, tiny_loras, mc_file,
                                                                     capsys, monkeypatch, caplog):
    lib, runs = tmp_path / "lib", tmp_path / "runs"
    Library(lib).add(tiny_loras)
    before = _catalog_state(lib)
    out = runs / "arc"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "MASHUP_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "mashup", *map(str, _run_args(tiny_base, mc_file, lib, out,
                                                                                   1_000_000))],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        init = _wait_for(runs, f".arc{TMP_MARK}*/mashup/adapter_init.safetensors", proc, timeout=240)
        time.sleep(1.0)  # well into the million steps
        assert proc.poll() is None, "still training when killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    orphan = init.parents[1]
    assert orphan.is_dir(), "the kill left the temp dir behind"
    assert not out.exists(), "no finished-looking output"
    assert _catalog_state(lib) == before, "the catalog's bytes are unchanged"

    with caplog.at_level(logging.WARNING, logger="mashup.atomic_dir"):
        run_cli([*_run_args(tiny_base, mc_file, lib, out, 2), "--json"], capsys, monkeypatch)
    assert [r.getMessage().split(" (pid")[0] for r in caplog.records if r.name == "mashup.atomic_dir"] == \
        [f"removing {orphan}, left by a killed mashup process"]
    assert f"(pid {proc.pid}," in caplog.text
    assert not orphan.exists() and [p.name for p in runs.iterdir()] == ["arc"]
    assert (out / "summary.json").exists() and len(Library(lib).list()) == 4


def test_a_failing_registration_leaves_no_output(tmp_path, tiny_base, tiny_loras, mc_file, capsys, monkeypatch):
    lib, out = tmp_path / "lib", tmp_path / "runs" / "arc"
    Library(lib).add(tiny_loras)
    before = [r.to_dict() for r in Library(lib).list()]

    def failing_add(self, *args, **kwargs):
        raise LibraryError("catalog refused the entry", str(self.directory), "fix it")

    monkeypatch.setattr(Library, "add", failing_add)
    _, err = run_cli(_run_args(tiny_base, mc_file, lib, out, 1), capsys, monkeypatch, expect=1)
    assert err.strip().splitlines()[-1].startswith("error: catalog refused the entry")
    assert not out.exists() and list((tmp_path / "runs").iterdir()) == []
    assert [r.to_dict() for r in Library(lib).list()] == before


def _fail_the_registered_summary(run_module, monkeypatch) -> None:
    """The disk fills as the summary that names the registered entry is written."""
    real = run_module.write_json

    def write_json(path, data):
        if "registered" in data:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(run_module, "write_json", write_json)


def test_a_failure_after_registration_unregisters(tmp_path, tiny_base, tiny_loras, mc_file, capsys, monkeypatch):
    """The summary rewrite after registration fails: the run dir goes and so does the new catalog entry."""
    run_module = importlib.import_module("mashup.run")  # the package exports a function of the same name

    lib, out = tmp_path / "lib", tmp_path / "runs" / "arc"
    Library(lib).add(tiny_loras)
    _fail_the_registered_summary(run_module, monkeypatch)
    _, err = run_cli(_run_args(tiny_base, mc_file, lib, out, 1), capsys, monkeypatch, expect=1)
    assert err.strip().splitlines()[-1].startswith("error: No space left on device")
    assert not out.exists() and len(Library(lib).list()) == 3


def test_an_interrupted_prototype_warm_up_leaves_a_complete_registered_run(tmp_path, tiny_base, tiny_loras, mc_file,
                                                                         capsys, monkeypatch):
    """The warm-up runs after the commit: Ctrl-C there costs the cache, not a catalog entry pointing at a run dir
    that was removed (as when it ran inside the commit)."""
    run_module = importlib.import_module("mashup.run")
    lib, out = tmp_path / "lib", tmp_path / "runs" / "arc"
    Library(lib).add(tiny_loras)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "warm_prototype_cache", interrupted)
    run_cli(_run_args(tiny_base, mc_file, lib, out, 1), capsys, monkeypatch, expect=130)
    summary = json.loads((out / "summary.json").read_text())
    record = Library(lib).get(summary["registered"])
    assert Path(record.path).is_dir() and len(Library(lib).list()) == 4


def test_a_failure_after_registration_keeps_weights_registered_before(tmp_path, tiny_base, tiny_loras, mc_file,
                                                                      capsys, monkeypatch):
    """A rerun whose weights were registered by an earlier run: failing, it must not remove that entry."""
    run_module = importlib.import_module("mashup.run")
    lib = tmp_path / "lib"
    Library(lib).add(tiny_loras)
    run_cli(_run_args(tiny_base, mc_file, lib, tmp_path / "runs" / "first", 1), capsys, monkeypatch)
    before = [r.id for r in Library(lib).list()]
    _fail_the_registered_summary(run_module, monkeypatch)
    run_cli(_run_args(tiny_base, mc_file, lib, tmp_path / "runs" / "second", 1), capsys, monkeypatch, expect=1)
    assert [r.id for r in Library(lib).list()] == before and not (tmp_path / "runs" / "second").exists()
