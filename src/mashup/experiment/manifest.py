"""An artifact's manifest: its files with size, stat identity and sha256, recorded with each unit it serves.

A unit counts as done only while its artifact holds the files its record lists. The check is cheap, as
the library's own freshness test is (``mashup.library.freshness``): names first, then sizes; a file whose
mtime, ctime and inode are those recorded is taken as unchanged (tools that restore an mtime, ``touch -d``
or ``cp -p``, cannot set ctime back, and a replaced file has a new inode), and only the others are hashed
again: a copied dir has new stats and the same bytes, and keeps counting as done. An edit that keeps the
size, mtime, ctime and inode of a file takes a forged clock or file system, and is not looked for.

Left out are the files that differ between equal computations of a job (``VOLATILE``: seconds in the
result, the curve and the merge report, the temp dir's path in the training summary, library versions;
the record holds the numbers anyway) and what file managers leave in any dir they show (a hidden name
such as ``.DS_Store`` or ``._x``, ``Thumbs.db``, ``desktop.ini``): neither is a change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mashup.io import sha256_files, stat_files

RESULT = "unit_result.json"  # written last inside an artifact, before the dir is renamed into place
VOLATILE = frozenset({RESULT, "result.json", "curve.json", "curve.csv", "merge_report.json", "version.json"})
STRAY = frozenset({"Thumbs.db", "desktop.ini"})
STAT_KEYS = ("size", "mtime_ns", "ctime_ns", "ino")
Manifest = dict[str, dict[str, Any]]  # relative path -> size, mtime_ns, ctime_ns, ino and sha256


def counted(relative: str) -> bool:
    """Whether a file (its path inside the artifact) is part of the manifest."""
    parts = relative.split("/")
    return parts[-1] not in VOLATILE | STRAY and not any(part.startswith(".") for part in parts)


def _files(directory: Path) -> dict[str, Path]:
    return {path.relative_to(directory).as_posix(): path
            for path in sorted(p for p in directory.rglob("*") if p.is_file())}


def sha256_file(path: Path) -> str:
    """A file's sha256 (the library's digest of one file: the same hashing code)."""
    return sha256_files([path])


def _stat(path: Path) -> dict[str, Any]:
    return {key: value for key, value in stat_files([path])[0].items() if key in STAT_KEYS}


@dataclass(frozen=True)
class Difference:
    """The first way an artifact differs from a manifest: a counted file added, removed, or with other bytes."""

    path: str
    what: Literal["added", "removed", "changed"]

    def __str__(self) -> str:
        return f"{self.path} {self.what}"


def hash_outputs(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory``, by relative path (a record's ``outputs``)."""
    return {relative: sha256_file(path) for relative, path in _files(directory).items()}


def scan(directory: Path) -> tuple[dict[str, str], Manifest]:
    """Every file's sha256 (``outputs``) and the manifest, reading each file once."""
    outputs = hash_outputs(directory)
    return outputs, manifest_of(directory, outputs)


def manifest_of(directory: Path, hashes: dict[str, str]) -> Manifest:
    """The manifest of ``directory``'s counted files, their stats taken now and their sha256 from ``hashes``."""
    return {relative: {**_stat(path), "sha256": hashes[relative]}
            for relative, path in _files(directory).items() if counted(relative)}


def from_outputs(outputs: dict[str, str]) -> Manifest:
    """What a record written before manifests vouches for: its outputs' hashes (no stats: each file is hashed)."""
    return {relative: {"sha256": digest} for relative, digest in outputs.items()}


def verify(directory: Path, expected: Manifest) -> Manifest | Difference:
    """The manifest of ``directory`` now, when its counted files are those of ``expected`` (names and bytes);
    else the first file (by path) added, removed or changed. Stats that changed over the same bytes are updated."""
    files = {relative: path for relative, path in _files(directory).items() if counted(relative)}
    wanted = {relative: entry for relative, entry in expected.items() if counted(relative)}
    if files.keys() != wanted.keys():
        first = min(files.keys() ^ wanted.keys())
        return Difference(first, "added" if first in files else "removed")
    now = {relative: _stat(path) for relative, path in files.items()}
    resized = sorted(r for r in files if "size" in wanted[r] and now[r]["size"] != wanted[r]["size"])
    if resized:  # no file read yet
        return Difference(resized[0], "changed")
    for relative, path in files.items():
        same = all(wanted[relative].get(key) == now[relative][key] for key in STAT_KEYS)
        now[relative]["sha256"] = wanted[relative]["sha256"] if same else sha256_file(path)
        if now[relative]["sha256"] != wanted[relative]["sha256"]:
            return Difference(relative, "changed")
    return now
