"""Test-session hygiene for every test, doctest and README example.

Each test gets its own temporary folder as ``TMPDIR`` (and ``tempfile.tempdir``),
so whatever it or the code under test writes to "a temporary folder" (Dask's
scratch space, ``tempfile.mkdtemp()`` in an example) lands inside pytest's own
``tmp_path`` and is removed with it, instead of piling up in the system's
temporary folder.
"""

from __future__ import annotations

import tempfile

import pytest


@pytest.fixture(autouse=True)
def _private_tempdir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    private = tmp_path_factory.mktemp("tmpdir", numbered=True)
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    yield private
