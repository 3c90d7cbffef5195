"""Helpers of the monitoring and rulebook tests: the tools `make setup` unpacks, and the
monitoring role's templates rendered as the role renders them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
ROLE = ROOT / "roles" / "monitoring"
TOOLS = ROOT / ".build" / "tools" / "bin"


def tool(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([str(TOOLS), os.environ.get("PATH", "")]))
    assert found, f"{name} is missing: `make setup` unpacks it into {TOOLS}"
    return found


def render(template: str, dest: Path, *extra_vars: str) -> Path:
    """Render a role template the way the role does: Ansible's template module, role defaults."""
    args = ["ansible", "localhost", "-c", "local", "-m", "ansible.builtin.template"]
    args += ["-a", f"src={ROLE / 'templates' / template} dest={dest} mode=0644"]
    args += ["-e", f"@{ROLE / 'defaults' / 'main.yml'}"]
    for item in extra_vars:
        args += ["-e", item]
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return dest


