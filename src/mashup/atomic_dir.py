"""Output dirs that appear complete or not at all, across crashes and concurrent commands.

A command writes into a temp sibling ``.NAME.mashup-tmp-XXXXXXXX`` whose owner (pid, host, boot id,
process start time) is recorded beside it in ``.NAME.mashup-tmp-XXXXXXXX.owner.json``, written before
the dir is made. On success the temp dir is renamed to NAME only if NAME does not exist; the check and
the rename are one atomic step (``renameat2(RENAME_NOREPLACE)`` on Linux; elsewhere an atomic ``mkdir``
claims the name first), so of two commands racing for NAME one wins and the other fails with one line.
Plain ``rename()`` is not enough: it silently replaces an *empty* existing dir.

Temp dirs of dead processes on this host are removed by the next command writing into the same
parent dir (one warning line each); those it cannot judge (another host, no owner record) are
reported and left alone. A record whose dir is gone goes too: its writer died, or it is empty (killed
between creating and writing it) and older than a grace no live writer needs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from functools import cache
from pathlib import Path

from mashup.errors import MashupError
from mashup.process_owner import Owner, current_pid_namespace

logger = logging.getLogger(__name__)

TMP_MARK = ".mashup-tmp-"
OWNER_SUFFIX = ".owner.json"
UNREADABLE_RECORD_GRACE_S = 60.0
OnCommit = Callable[[Path], None]


def _owner_path(tmp: Path) -> Path:
    return tmp.with_name(tmp.name + OWNER_SUFFIX)


def _read_owner(tmp: Path) -> Owner | None:
    try:
        return Owner(**json.loads(_owner_path(tmp).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def make_owned_temp(out_dir: Path) -> Path:
    """Create ``.NAME.mashup-tmp-XXXXXXXX`` beside ``out_dir``, its owner record written first."""
    owner = json.dumps(asdict(Owner.current()))
    stem = out_dir.name[:100]  # keep the temp name within the 255-byte limit
    for _ in range(100):
        tmp = out_dir.parent / f".{stem}{TMP_MARK}{secrets.token_hex(4)}"
        try:
            fd = os.open(_owner_path(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(owner + "\n")
        try:
            tmp.mkdir()
        except FileExistsError:
            _owner_path(tmp).unlink()
            continue
        return tmp
    raise MashupError("cannot create a temporary output dir", str(out_dir.parent), "check the directory")


def discard_temp(tmp: Path) -> None:
    """Remove an owned temp dir, then its owner record (that order: a dir never outlives its record)."""
    _remove(tmp)
    with contextlib.suppress(OSError):
        _owner_path(tmp).unlink()


def _stale_record(record: Path, unreadable_after_s: float) -> bool:
    """A record without its dir, left by a dead process: crashed before ``mkdir``, after the final rename,
    or (unreadable: empty or cut short) between creating the record and writing it."""
    tmp = record.with_name(record.name[: -len(OWNER_SUFFIX)])
    if tmp.exists():
        return False
    owner = _read_owner(tmp)
    if owner is not None:
        return owner.state() == "dead"
    try:  # a live writer fills its record within microseconds of creating it
        return time.time() - record.stat().st_mtime >= unreadable_after_s
    except OSError:
        return False


def clean_orphans(parent: Path, *, unreadable_after_s: float = UNREADABLE_RECORD_GRACE_S) -> list[Path]:
    """Remove temp dirs that dead processes on this host left in ``parent``; report (and return) the others.

    An owner record with no dir and no readable content is removed once it is ``unreadable_after_s`` old;
    a caller that holds ``parent`` exclusively (an experiment dir under its lock) passes 0.
    """
    reported = []
    for entry in sorted(Path(parent).glob(f".*{TMP_MARK}*")):
        if entry.name.endswith(OWNER_SUFFIX):
            if _stale_record(entry, unreadable_after_s):
                entry.unlink(missing_ok=True)
            continue
        if not entry.is_dir():
            continue
        owner = _read_owner(entry)
        state = owner.state() if owner else "unknown"
        if state == "dead":
            logger.warning("removing %s, left by a killed mashup process (pid %d, started %s)", entry,
                           owner.pid, owner.created)  # type: ignore[union-attr]
            discard_temp(entry)
        elif state == "unknown":
            why = "no owner record" if owner is None else f"written by pid {owner.pid} on host {owner.host}" + (
                " in another pid namespace" if owner.pid_namespace != current_pid_namespace() else "")
            logger.warning("leaving %s (%s; cannot tell whether that process still runs): remove it by hand "
                           "if no mashup command is writing it", entry, why)
            reported.append(entry)
    return reported


@cache
def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28, musl >= 1.2.2
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    func.restype = ctypes.c_int
    return func


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` in one atomic step that fails (FileExistsError) if ``dst`` exists."""
    func = _renameat2()
    if func is not None:
        if func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # these: file system lacks the flag
            raise OSError(code, os.strerror(code), str(src), None, str(dst))
    if os.name == "nt":
        os.rename(src, dst)  # never replaces on Windows
        return
    os.mkdir(dst)  # claims the name atomically; rename() then replaces only our own empty placeholder
    try:
        os.rename(src, dst)
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(dst)
        raise


def _race_error(out_dir: Path) -> MashupError:
    return MashupError("output directory appeared while this command ran (another command wrote it); nothing "
                       "was replaced", str(out_dir), "choose another --out, or remove it and run again")


def _place(tmp: Path, out_dir: Path, overwrite: bool, existed_empty: bool) -> Path | None:
    """Rename ``tmp`` to ``out_dir``; with ``overwrite`` the old output is moved aside first and returned."""
    displaced = None
    if overwrite and (out_dir.exists() or out_dir.is_symlink()):
        displaced = make_owned_temp(out_dir)  # owned, so a crash right here leaves an orphan that gets cleaned
        with contextlib.suppress(FileNotFoundError):
            os.rename(out_dir, displaced / "previous")
    elif existed_empty:
        with contextlib.suppress(OSError):
            os.rmdir(out_dir)  # accepted as empty at the start; removes nothing if it has been filled since
    try:
        rename_noreplace(tmp, out_dir)
    except OSError as exc:
        if displaced is not None:
            discard_temp(displaced)
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise _race_error(out_dir) from None
        raise MashupError(f"cannot move the finished output into place ({exc.strerror})", str(out_dir),
                          "check the directory and its permissions") from None
    return displaced


def _undo(out_dir: Path, displaced: Path | None) -> None:
    _remove(out_dir)
    if displaced is not None:
        with contextlib.suppress(OSError):
            os.rename(displaced / "previous", out_dir)
        discard_temp(displaced)


def require_free_output(out_dir: Path, *, overwrite: bool = False) -> None:
    """Refuse an output path that is a file, or (without ``overwrite``) a dir that is not empty: what
    ``atomic_output_dir`` checks first, for a caller with minutes of work to do before it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise MashupError("the output path is a file, not a directory", str(out_dir), "choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise MashupError("output directory already exists and is not empty", str(out_dir),
                          "choose another --out or remove it")


@contextlib.contextmanager
def atomic_output_dir(out_dir: Path, *, overwrite: bool = False, on_commit: OnCommit | None = None
                      ) -> Iterator[Path]:
    """Yield an empty temp sibling dir that becomes ``out_dir`` only if the block succeeds.

    A failure (or a kill) leaves nothing at ``out_dir``. Without ``overwrite`` an existing non-empty
    ``out_dir`` is refused at the start, and one appearing meanwhile makes the commit fail (MashupError)
    rather than be replaced. ``on_commit(out_dir)`` runs after the rename: if it raises, the output is
    removed again (an overwritten one restored) and the error propagates, so a step such as library
    registration succeeds or fails together with the output.
    """
    out_dir = Path(out_dir)
    existed_empty = out_dir.is_dir() and not any(out_dir.iterdir())
    require_free_output(out_dir, overwrite=overwrite)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MashupError(f"cannot create the output's parent dir ({exc.strerror})", str(out_dir.parent),
                          "check the path and its permissions") from None
    clean_orphans(out_dir.parent)
    tmp = make_owned_temp(out_dir)
    try:
        yield tmp
        displaced = _place(tmp, out_dir, overwrite, existed_empty)
    except BaseException:
        discard_temp(tmp)
        raise
    try:
        if on_commit is not None:
            on_commit(out_dir)
    except BaseException:
        _undo(out_dir, displaced)
        discard_temp(tmp)
        raise
    if displaced is not None:
        discard_temp(displaced)
    discard_temp(tmp)  # only the owner record is left at this point
