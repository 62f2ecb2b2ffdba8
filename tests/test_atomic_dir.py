"""Atomic output dirs: all-or-nothing commits, races that fail cleanly, orphans of killed processes."""

import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

import mashup.atomic_dir as atomic_dir
from mashup.atomic_dir import OWNER_SUFFIX, TMP_MARK, atomic_output_dir, clean_orphans, make_owned_temp
from mashup.errors import MashupError


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if TMP_MARK in p.name)


@pytest.fixture(params=["renameat2", "fallback"])
def rename_mode(request, monkeypatch):
    """Every commit test runs with Linux's renameat2 and with the portable mkdir-then-rename fallback."""
    if request.param == "renameat2":
        if atomic_dir._renameat2() is None:
            pytest.skip("renameat2 is not available here")
    else:
        monkeypatch.setattr(atomic_dir, "_renameat2", lambda: None)
    return request.param


def test_commit_and_failure(tmp_path, rename_mode):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        assert not any(tmp.iterdir()), "the caller gets an empty dir"
        (tmp / "a.txt").write_text("done")
    assert (out / "a.txt").read_text() == "done" and _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError), atomic_output_dir(tmp_path / "failed") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("boom")
    assert not (tmp_path / "failed").exists() and _leftovers(tmp_path) == []
    with pytest.raises(MashupError, match="already exists and is not empty"), atomic_output_dir(out):
        pass


def test_two_commits_racing_for_one_target_one_wins_cleanly(tmp_path, rename_mode):
    out = tmp_path / "out"
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def write(name: str) -> None:
        try:
            with atomic_output_dir(out) as tmp:
                (tmp / "who").write_text(name)
                (tmp / "payload").write_text(name * 100)
                barrier.wait()  # both have passed the existence check and written everything
        except MashupError as exc:
            outcomes[name] = exc.line()
        else:
            outcomes[name] = "ok"

    threads = [threading.Thread(target=write, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winner = (out / "who").read_text()
    loser = "b" if winner == "a" else "a"
    assert outcomes[winner] == "ok"
    assert "appeared while this command ran" in outcomes[loser] and "\n" not in outcomes[loser]
    assert (out / "payload").read_text() == winner * 100, "the winner's output is whole, nothing mixed in"
    assert _leftovers(tmp_path) == []


def test_an_empty_dir_appearing_meanwhile_is_not_replaced(tmp_path, rename_mode):
    """Plain rename() would silently replace an empty dir; the commit must refuse instead."""
    out = tmp_path / "out"
    with pytest.raises(MashupError, match="appeared"), atomic_output_dir(out) as tmp:
        (tmp / "a").write_text("x")
        out.mkdir()
    assert out.is_dir() and not any(out.iterdir()) and _leftovers(tmp_path) == []


def test_an_empty_dir_existing_at_the_start_is_accepted(tmp_path, rename_mode):
    out = tmp_path / "out"
    out.mkdir()
    with atomic_output_dir(out) as tmp:
        (tmp / "a").write_text("x")
    assert (out / "a").exists()


def test_overwrite_replaces_and_a_failing_on_commit_restores(tmp_path, rename_mode):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "v").write_text("1")
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "v").write_text("2")
    assert (out / "v").read_text() == "2" and _leftovers(tmp_path) == []

    def fail(path):
        assert (path / "v").read_text() == "3", "on_commit sees the final dir"
        raise RuntimeError("registration failed")

    with pytest.raises(RuntimeError, match="registration"), atomic_output_dir(out, overwrite=True,
                                                                              on_commit=fail) as tmp:
        (tmp / "v").write_text("3")
    assert (out / "v").read_text() == "2", "the previous output is back"
    assert _leftovers(tmp_path) == []


def test_failing_on_commit_leaves_no_output(tmp_path, rename_mode):
    seen = []
    out = tmp_path / "out"
    with pytest.raises(MashupError, match="nope"), atomic_output_dir(
            out, on_commit=lambda p: seen.append(p) or (_ for _ in ()).throw(MashupError("nope"))) as tmp:
        (tmp / "a").write_text("x")
    assert seen == [out] and not out.exists() and _leftovers(tmp_path) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_orphan(parent, name, **owner_changes):
    tmp = make_owned_temp(parent / name)
    (tmp / "partial.bin").write_bytes(b"x" * 10)
    owner_path = tmp.with_name(tmp.name + OWNER_SUFFIX)
    owner = json.loads(owner_path.read_text())
    owner.update(owner_changes)
    owner_path.write_text(json.dumps(owner))
    return tmp


def test_orphans_of_dead_processes_are_removed_and_unjudgeable_ones_reported(tmp_path, caplog):
    dead = _fake_orphan(tmp_path, "a", pid=_dead_pid())
    reused_pid = _fake_orphan(tmp_path, "b", started=1)  # our pid, another start time: the pid was reused
    alive = make_owned_temp(tmp_path / "c")  # ours, still running
    foreign = _fake_orphan(tmp_path, "d", host="some-other-host")
    other_container = _fake_orphan(tmp_path, "d2", pid=_dead_pid(), pid_namespace=-1)
    no_record = tmp_path / f".e{TMP_MARK}deadbeef"
    no_record.mkdir()
    with caplog.at_level(logging.WARNING, logger="mashup.atomic_dir"):
        reported = clean_orphans(tmp_path)
    assert not dead.exists() and not reused_pid.exists()
    assert not dead.with_name(dead.name + OWNER_SUFFIX).exists()
    assert alive.exists() and foreign.exists() and no_record.exists() and other_container.exists()
    assert reported == [foreign, other_container, no_record]
    removed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removing")]
    left = [r.getMessage() for r in caplog.records if r.getMessage().startswith("leaving")]
    assert len(removed) == 2 and len(left) == 3 and "some-other-host" in left[0]


def test_the_next_command_in_the_parent_dir_cleans_up(tmp_path):
    dead = _fake_orphan(tmp_path, "old", pid=_dead_pid())
    with atomic_output_dir(tmp_path / "new") as tmp:
        assert not dead.exists()
        (tmp / "a").write_text("x")
    assert _leftovers(tmp_path) == []


def test_owner_records_without_a_dir_go_when_dead_or_unreadable_past_the_grace(tmp_path):
    dead = tmp_path / f".a{TMP_MARK}00000001{OWNER_SUFFIX}"  # killed after the final rename
    dead.write_text(json.dumps({**json.loads(_owner_of(make_owned_temp(tmp_path / "x"))), "pid": _dead_pid()}))
    old_empty = tmp_path / f".b{TMP_MARK}00000002{OWNER_SUFFIX}"  # killed between creating and writing it
    old_empty.touch()
    os.utime(old_empty, (time.time() - 120, time.time() - 120))
    fresh_empty = tmp_path / f".c{TMP_MARK}00000003{OWNER_SUFFIX}"  # maybe a live writer about to fill it
    fresh_empty.touch()
    clean_orphans(tmp_path)
    assert not dead.exists() and not old_empty.exists() and fresh_empty.exists()
    clean_orphans(tmp_path, unreadable_after_s=0)
    assert not fresh_empty.exists()
    assert len(_leftovers(tmp_path)) == 2  # the live temp dir "x" and its record stay


def _owner_of(tmp):
    return tmp.with_name(tmp.name + OWNER_SUFFIX).read_text()
