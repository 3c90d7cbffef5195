"""Ansible's collection loader for the inventory plugin's tests, as ansible-test's units installs it.

The rest of the unit suite imports the collection through pytest's pythonpath, as plain
namespace packages; Ansible's plugin loader needs the collection's package to carry its
metadata (meta/runtime.yml), which only its own finder sets. So, for the tests of this
directory, the finder is installed and the collection's package modules imported again
through it. The Makefile runs this directory in a pytest process of its own: once
Ansible's plugin loader is initialised in a process it is not undone cleanly, and the
other unit tests then fail to import (seen under xdist).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from ansible.plugins.loader import init_plugin_loader

COLLECTIONS = Path(__file__).resolve().parents[4] / ".collections"
PACKAGES = ("ansible_collections.edgeml.fleet", "ansible_collections.edgeml", "ansible_collections")


@pytest.fixture(scope="module", autouse=True)
def ansible_collection_loader():
    meta_path, path_hooks = list(sys.meta_path), list(sys.path_hooks)
    importer_cache = dict(sys.path_importer_cache)
    modules = {name: module for name, module in sys.modules.items() if name.startswith("ansible_collections")}
    for package in PACKAGES:
        sys.modules.pop(package, None)
    init_plugin_loader([str(COLLECTIONS)])
    importlib.import_module("ansible_collections.edgeml.fleet")
    yield
    sys.meta_path[:], sys.path_hooks[:] = meta_path, path_hooks
    sys.path_importer_cache.clear()
    sys.path_importer_cache.update(importer_cache)
    for name in [name for name in sys.modules if name.startswith("ansible_collections")]:
        del sys.modules[name]
    sys.modules.update(modules)
