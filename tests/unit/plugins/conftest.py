"""Fixtures the plugin unit tests share."""

from __future__ import annotations

import pytest
from ansible_collections.edgeml.fleet.tests.unit.plugins.bundle_models import write_key


@pytest.fixture
def keys(tmp_path):
    """Three signing keys: release and next (both trusted while keys rotate), stranger."""
    directory = tmp_path / "keys"
    directory.mkdir()
    return {name: write_key(directory, name) for name in ("release", "next", "stranger")}
