"""Fixtures shared by the library tests."""

import pytest

from mashup.library import freshness, records


@pytest.fixture()
def rehashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the dirs the freshness check hashed again (a full re-hash, not a stat)."""
    calls: list[str] = []
    real = freshness.sha256_files
    monkeypatch.setattr(freshness, "sha256_files", lambda files: calls.append(files[0].parent.name) or real(files))
    return calls


@pytest.fixture()
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the checkpoint dirs hashed at registration."""
    calls: list[str] = []
    real = records.sha256_files
    monkeypatch.setattr(records, "sha256_files",
                        lambda files, **kwargs: calls.append(files[0].parent.name) or real(files, **kwargs))
    return calls
