"""What every output dir records beside its results: the versions of the packages that made it."""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("torch", "transformers", "peft")


def version_info() -> dict[str, str]:
    """mashup's, the numeric packages' and Python's versions; read from the installed metadata, so recording
    them imports none of those packages (a merge or an experiment's config check stays light)."""
    from mashup import __version__

    info = {"mashup": __version__}
    for package in PACKAGES:
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = "not installed"
    return {**info, "python": platform.python_version()}


def write_version(out_dir: Path) -> None:
    (out_dir / "version.json").write_text(json.dumps(version_info(), indent=2) + "\n")
