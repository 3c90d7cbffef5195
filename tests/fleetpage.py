"""The fleet page (playbooks/fleet_status.yml) as tests read it: the page's path and each
host's row as the text of its cells."""

from __future__ import annotations

import html
import re
from pathlib import Path

from labtools import LAB_INVENTORY, run_playbook


def fleet_page() -> tuple[Path, dict[str, list[str]]]:
    """Run playbooks/fleet_status.yml; the page it wrote, and each host's row as the text of its cells."""
    report = run_playbook("fleet_status.yml", "-i", str(LAB_INVENTORY))
    message = next(
        result["msg"]
        for play in report["plays"]
        for task in play["tasks"]
        if task["task"]["name"] == "Say where the fleet page is"
        for result in task["hosts"].values()
    )
    page = Path(message.removeprefix("fleet page: "))
    rows = {}
    for row in re.findall(r'<tr class="[^"]*">\s*<td class="name">.*?</tr>', page.read_text(), re.S):
        cells = [
            html.unescape(re.sub("<[^>]+>", " ", cell)).split()
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        ]
        rows[cells[0][0]] = [" ".join(cell) for cell in cells]
    return page, rows
