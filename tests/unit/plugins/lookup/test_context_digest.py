"""context_digest changes exactly when a build context changes."""

from __future__ import annotations

import os

import pytest
from ansible.errors import AnsibleLookupError
from ansible_collections.edgeml.fleet.plugins.lookup.context_digest import tree_digest


@pytest.fixture
def context(tmp_path):
    (tmp_path / "Containerfile").write_text("FROM scratch\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('hi')\n")
    return tmp_path


def test_same_tree_same_digest(context, tmp_path_factory):
    twin = tmp_path_factory.mktemp("twin")
    (twin / "app").mkdir()
    (twin / "app" / "main.py").write_text("print('hi')\n")
    (twin / "Containerfile").write_text("FROM scratch\n")
    assert tree_digest(str(context)) == tree_digest(str(twin))


@pytest.mark.parametrize(
    "change",
    [
        lambda root: (root / "app" / "main.py").write_text("print('bye')\n"),
        lambda root: (root / "app" / "new.py").write_text(""),
        lambda root: (root / "app" / "main.py").rename(root / "app" / "other.py"),
        lambda root: os.chmod(root / "app" / "main.py", 0o755),
        lambda root: (root / "Containerfile").unlink(),
    ],
    ids=["content", "new file", "rename", "mode", "removed"],
)
def test_any_change_changes_the_digest(context, change):
    before = tree_digest(str(context))
    change(context)
    assert tree_digest(str(context)) != before


def test_excluded_names_do_not_count(context):
    before = tree_digest(str(context), frozenset({"__pycache__"}))
    (context / "app" / "__pycache__").mkdir()
    (context / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    assert tree_digest(str(context), frozenset({"__pycache__"})) == before


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(AnsibleLookupError, match="is not a directory"):
        tree_digest(str(tmp_path / "nope"))
