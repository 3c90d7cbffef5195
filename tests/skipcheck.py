"""No silent skip: a pytest plugin loaded by every pytest run of the suite.

Every run ends with a skip summary: each skipped (or xfailed) test, its reason, and
whether tests/skip-allowlist.yml allows it. A skip the allow-list does not allow fails the
run (exit 1), so a machine that lacks a tool, a library or a Molecule instance cannot turn
tests into passes. pytest's own failures are kept as they are (exit 5, no test collected,
stays 5).

Loaded by the repository's pytest.ini (``-p skipcheck``; its ``pythonpath`` puts tests/ on
sys.path): the unit, integration, e2e and VM layers and the testinfra verifies of the
Molecule scenarios (their rootdir is the repository, so the same pytest.ini applies); and
by server/tests/conftest.py for the model server's suite. ``--skip-allowlist PATH`` reads
another allow-list (the test of this plugin, tests/unit/test_skip_policy.py, uses it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

DEFAULT_ALLOWLIST = Path(__file__).resolve().with_name("skip-allowlist.yml")
SECTION = "skip summary"
NO_SKIPS = "no test skipped"


@dataclass(frozen=True)
class Allowed:
    """One allow-list entry: what it matches (a reason and/or a test id) and why."""

    why: str
    reason: re.Pattern | None = None
    test: re.Pattern | None = None

    def matches(self, nodeid: str, reason: str) -> bool:
        return (self.reason is None or bool(self.reason.search(reason))) and (
            self.test is None or bool(self.test.search(nodeid))
        )


@dataclass(frozen=True)
class Skip:
    nodeid: str
    reason: str
    kind: str  # "skipped" or "xfailed"
    allowed: Allowed | None


def load_allowlist(path: Path) -> list[Allowed]:
    """The entries of PATH; a malformed file is a usage error, never an empty list."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise pytest.UsageError(f"skip allow-list {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("allowed"), list):
        raise pytest.UsageError(f"skip allow-list {path}: wants a mapping with an 'allowed' list (may be empty)")
    entries = []
    for number, entry in enumerate(data["allowed"], start=1):
        where = f"skip allow-list {path}, entry {number}"
        if not isinstance(entry, dict) or set(entry) - {"reason", "test", "why"}:
            raise pytest.UsageError(f"{where}: keys are reason, test (regular expressions) and why")
        if not str(entry.get("why") or "").strip():
            raise pytest.UsageError(f"{where}: says nothing about why it cannot run here ('why')")
        if not entry.get("reason") and not entry.get("test"):
            raise pytest.UsageError(f"{where}: matches nothing (give 'reason', 'test' or both)")
        try:
            entries.append(
                Allowed(
                    why=" ".join(str(entry["why"]).split()),
                    reason=re.compile(str(entry["reason"])) if entry.get("reason") else None,
                    test=re.compile(str(entry["test"])) if entry.get("test") else None,
                )
            )
        except re.error as exc:
            raise pytest.UsageError(f"{where}: {exc}") from exc
    return entries


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason pytest shows for a skipped or xfailed report."""
    if hasattr(report, "wasxfail"):
        return str(report.wasxfail) or "xfail"
    longrepr = report.longrepr
    if isinstance(longrepr, (tuple, list)) and len(longrepr) == 3:  # (path, line, reason)
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason[len("Skipped: ") :] if reason.startswith("Skipped: ") else reason


class SkipCheck:
    def __init__(self, config: pytest.Config, allowlist: Path) -> None:
        self.config = config
        self.allowlist = allowlist
        self.entries = load_allowlist(allowlist)
        self.skips: list[Skip] = []

    def _record(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        reason = skip_reason(report)
        allowed = next((entry for entry in self.entries if entry.matches(report.nodeid, reason)), None)
        kind = "xfailed" if hasattr(report, "wasxfail") else "skipped"
        self.skips.append(Skip(report.nodeid, reason, kind, allowed))

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped:
            self._record(report)

    @pytest.hookimpl
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:  # a whole module skipped at import (importorskip, allow_module_level)
            self._record(report)

    @property
    def unlisted(self) -> list[Skip]:
        return [skip for skip in self.skips if skip.allowed is None]

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # Only a clean run becomes a failure: every other exit status already is one.
        if self.unlisted and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _shown_path(self) -> str:
        try:
            return str(self.allowlist.relative_to(self.config.rootpath))
        except ValueError:
            return str(self.allowlist)

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter) -> None:
        tr = terminalreporter
        tr.section(SECTION, sep="=", bold=True)
        if not self.skips:
            tr.line(f"{NO_SKIPS} (allow-list: {self._shown_path()})")
            return
        unlisted = self.unlisted
        tr.line(
            f"{len(self.skips)} skip(s): {len(self.skips) - len(unlisted)} allowed by {self._shown_path()}, "
            f"{len(unlisted)} NOT allowed"
        )
        for skip in self.skips:
            verdict = "allowed    " if skip.allowed else "NOT ALLOWED"
            kind = "" if skip.kind == "skipped" else f" [{skip.kind}]"
            tr.line(f"{verdict} {skip.nodeid}{kind}: {skip.reason}", red=skip.allowed is None)
            if skip.allowed:
                tr.line(f"              why it cannot run here: {skip.allowed.why}")
        if unlisted:
            tr.line(
                f"FAILED: {len(unlisted)} skip(s) not in {self._shown_path()}. Make the test run here "
                "(`make setup` installs what the tests need), or list its reason there with why it cannot "
                "run here.",
                red=True,
                bold=True,
            )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("skipcheck", "no silent skip").addoption(
        "--skip-allowlist",
        default=str(DEFAULT_ALLOWLIST),
        help="the allow-list of skips that cannot run here (default: %(default)s)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # xdist workers report every test to the controller, which checks the whole run.
    if hasattr(config, "workerinput"):
        return
    config.pluginmanager.register(
        SkipCheck(config, Path(config.getoption("skip_allowlist")).resolve()), "skipcheck-session"
    )
