# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError, EdgeMLModule, make_diff

SPEC = {"x": {"type": "str", "default": "a"}}


@pytest.mark.parametrize(
    "error, text",
    [
        (EdgeMLError("Broken."), "Broken."),
        (EdgeMLError("Broken. ", "Fix it."), "Broken. Fix it."),
    ],
)
def test_error_message_joins_hint(error, text):
    assert str(error) == text


def test_make_diff_headers():
    assert make_diff("a", "b") == {"before": "a", "after": "b"}
    assert make_diff("a", "b", "h1", "h2") == {
        "before": "a",
        "after": "b",
        "before_header": "h1",
        "after_header": "h2",
    }


def _run(func, capsys, **args):
    with patch_module_args(args):
        wrapper = EdgeMLModule(SPEC)
        with pytest.raises(SystemExit):
            wrapper.run(func)
    return wrapper, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("diff", [True, False])
def test_run_success_and_diff_only_when_asked(capsys, diff):
    def func(w):
        return {"changed": True, "d": w.diff("a", "b"), "check": w.check_mode}

    wrapper, result = _run(func, capsys, _ansible_diff=diff, _ansible_check_mode=True)
    assert result["changed"] is True and result["check"] is True
    assert (result["d"] is not None) is diff
    assert wrapper.params["x"] == "a"


def test_run_turns_errors_into_failures(capsys):
    def func(w):
        raise EdgeMLError("What is wrong.", "How to fix it.", detail=1)

    _unused1, result = _run(func, capsys)
    assert result["failed"] is True
    assert result["msg"] == "What is wrong. How to fix it."
    assert result["detail"] == 1


def test_require_libs(capsys):
    def func(w):
        w.require_libs([("numpy", None), ("missinglib", "Traceback ...")])
        return {}

    _unused2, result = _run(func, capsys)
    assert result["failed"] is True and "missinglib" in result["msg"]
