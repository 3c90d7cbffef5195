"""No silent skip (tests/skipcheck.py): the check itself, run for real.

Each case runs pytest in a subprocess on a tiny test file in a temporary directory, with
the plugin loaded and an allow-list of the case's own, and reads the exit status and the
skip summary. The last cases check that every suite of the repository loads the plugin.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import skipcheck

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
PYTHON = sys.executable


def child_env() -> dict[str, str]:
    """This process's environment without what the outer pytest (and xdist) put there."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_", "MOLECULE_"))}
    env["PYTHONPATH"] = str(TESTS)
    env["NO_COLOR"] = "1"
    return env


def run_pytest(tmp_path: Path, tests: str, allowlist: str = "allowed: []\n", *args: str):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_case.py").write_text(textwrap.dedent(tests))
    (tmp_path / "allow.yml").write_text(textwrap.dedent(allowlist))
    command = [PYTHON, "-m", "pytest", "-p", "skipcheck", "--skip-allowlist", "allow.yml", "-p", "no:cacheprovider"]
    run = subprocess.run(
        [*command, *args], cwd=tmp_path, env=child_env(), capture_output=True, text=True, check=False, timeout=120
    )
    return run.returncode, run.stdout + run.stderr


def summary(output: str) -> str:
    """The skip summary section of a pytest run's output."""
    assert f" {skipcheck.SECTION} " in output, output
    return output.split(f" {skipcheck.SECTION} ", 1)[1]


SKIPS_FOR_A_TOOL = """
    import pytest

    def test_runs():
        pass

    def test_needs_a_tool():
        pytest.skip("needs frobnicate on PATH")
"""


def test_a_skip_not_in_the_allow_list_fails_the_run(tmp_path):
    status, output = run_pytest(tmp_path, SKIPS_FOR_A_TOOL)
    assert status == 1, output
    assert "NOT ALLOWED test_case.py::test_needs_a_tool: needs frobnicate on PATH" in summary(output)
    assert "1 skip(s): 0 allowed by allow.yml, 1 NOT allowed" in summary(output)
    assert "FAILED: 1 skip(s) not in allow.yml" in summary(output)


def test_an_allowed_skip_passes_and_is_listed_with_why(tmp_path):
    allow = """
        allowed:
          - reason: ^needs frobnicate
            why: frobnicate exists only on RHEL hardware
    """
    status, output = run_pytest(tmp_path, SKIPS_FOR_A_TOOL, allow)
    assert status == 0, output
    listed = summary(output)
    assert "allowed     test_case.py::test_needs_a_tool: needs frobnicate on PATH" in listed
    assert "why it cannot run here: frobnicate exists only on RHEL hardware" in listed
    assert "NOT ALLOWED" not in listed and "FAILED" not in listed


def test_an_entry_matches_by_test_id_and_both_patterns_must_match(tmp_path):
    by_id = """
        allowed:
          - test: ::test_needs_a_tool$
            why: by id
    """
    assert run_pytest(tmp_path, SKIPS_FOR_A_TOOL, by_id)[0] == 0
    both = """
        allowed:
          - reason: frobnicate
            test: ::test_something_else$
            why: the reason matches, the test does not
    """
    status, output = run_pytest(tmp_path, SKIPS_FOR_A_TOOL, both)
    assert status == 1 and "NOT ALLOWED test_case.py::test_needs_a_tool" in summary(output)


def test_a_run_without_skips_says_so(tmp_path):
    status, output = run_pytest(tmp_path, "def test_runs():\n    pass\n")
    assert status == 0, output
    assert skipcheck.NO_SKIPS in summary(output)


@pytest.mark.parametrize(
    ("tests", "reason"),
    [
        # A whole module skipped at import (a missing library).
        (
            "import pytest\nlib = pytest.importorskip('no_such_library_here')\n",
            "could not import 'no_such_library_here'",
        ),
        # What an empty Molecule instance list did: an empty parameter set.
        (
            "import pytest\n@pytest.mark.parametrize('host', [])\ndef test_host(host):\n    pass\n",
            "got empty parameter set",
        ),
        # A skipif marker on the module (test_edge_host_templates.py without curl).
        (
            "import pytest\npytestmark = pytest.mark.skipif(True, reason='needs curl')\ndef test_x():\n    pass\n",
            "needs curl",
        ),
        # An xfail hides a failure just as well.
        ("import pytest\n@pytest.mark.xfail(reason='known bug')\ndef test_x():\n    assert False\n", "known bug"),
    ],
    ids=["importorskip", "empty-parameter-set", "skipif", "xfail"],
)
def test_every_kind_of_skip_counts(tmp_path, tests, reason):
    other = tmp_path / "test_other.py"
    other.write_text("def test_runs():\n    pass\n")  # so that something was collected and passed
    status, output = run_pytest(tmp_path, tests)
    assert status == 1, output
    assert "NOT ALLOWED test_case.py" in summary(output) and reason in summary(output)


def test_under_xdist_the_controller_checks_the_whole_run(tmp_path):
    status, output = run_pytest(tmp_path, SKIPS_FOR_A_TOOL, "allowed: []\n", "-n", "2")
    assert status == 1, output
    assert summary(output).count("NOT ALLOWED test_case.py::test_needs_a_tool") == 1


def test_other_failures_keep_their_exit_status(tmp_path):
    # No test collected stays pytest's exit 5 (a failure), not 0 nor 1.
    status, output = run_pytest(tmp_path, "")
    assert status == 5, output
    assert skipcheck.NO_SKIPS in summary(output)
    # A failing test with an unlisted skip: 1, both reported.
    status, output = run_pytest(tmp_path, textwrap.dedent(SKIPS_FOR_A_TOOL) + "\ndef test_fails():\n    assert False\n")
    assert status == 1, output
    assert "NOT ALLOWED" in summary(output) and "1 failed" in output


def test_an_entry_without_why_is_a_usage_error(tmp_path):
    status, output = run_pytest(tmp_path, SKIPS_FOR_A_TOOL, "allowed:\n  - reason: frobnicate\n")
    assert status == 4, output
    assert "says nothing about why it cannot run here" in output


def test_the_repository_allow_list_loads_and_says_why():
    for entry in skipcheck.load_allowlist(skipcheck.DEFAULT_ALLOWLIST):
        assert entry.why and (entry.reason or entry.test)


# --- every suite of the repository loads the plugin ---------------------------------------


def test_this_run_has_the_plugin(request):
    assert request.config.pluginmanager.has_plugin("skipcheck")


def repo_pytest(*args: str, cwd: Path = ROOT) -> tuple[int, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_", "MOLECULE_"))}
    run = subprocess.run(
        [PYTHON, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    return run.returncode, run.stdout + run.stderr


def test_the_server_suite_loads_it():
    status, output = repo_pytest("--collect-only", "-q", "server/tests/test_cli.py")
    assert status == 0, output
    assert skipcheck.NO_SKIPS in summary(output)


def test_the_vm_layer_loads_it():
    status, output = repo_pytest("--collect-only", "-q", "-m", "vm", "tests/vm")
    assert status == 0, output
    assert skipcheck.NO_SKIPS in summary(output)


@pytest.mark.parametrize("scenario", ["edge_host", "vm"])
def test_a_molecule_verify_without_instances_fails_and_loads_it(scenario):
    # As Molecule's testinfra verifier runs it: from the scenario directory, on the absolute
    # paths of its test files; here without the instance list Molecule would pass.
    directory = ROOT / "molecule" / scenario
    tests = sorted(str(path) for path in (directory / "tests").glob("test_*.py"))
    status, output = repo_pytest("-v", *tests, cwd=directory)
    assert status != 0, output
    assert "no Molecule instance found" in output
    assert skipcheck.NO_SKIPS in summary(output)
