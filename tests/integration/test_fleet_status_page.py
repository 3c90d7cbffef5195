"""The fleet page (playbooks/fleet_status.yml) on the lab fleet: what it shows for each host
is what the host answers over HTTP, and it renders in a real headless browser
(tests/browser.py; the screenshot is tests/output/fleet-status.png)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import yaml
from browser import screenshot
from labtools import LAB_INVENTORY, run_playbook, serving_versions


def _fleet() -> dict[str, str]:
    hosts = yaml.safe_load(LAB_INVENTORY.read_text())["all"]["children"]["edge"]["children"]["debian"]["hosts"]
    return {name: settings["edgeml_model_url_from_controller"] for name, settings in hosts.items()}


def test_the_fleet_page_shows_what_every_host_serves():
    report = run_playbook("fleet_status.yml", "-i", str(LAB_INVENTORY))
    message = next(
        result["msg"]
        for play in report["plays"]
        for task in play["tasks"]
        if task["task"]["name"] == "Say where the fleet page is"
        for result in task["hosts"].values()
    )
    page = Path(message.removeprefix("fleet page: "))
    text = page.read_text()
    versions = serving_versions(_fleet())
    for host, version in versions.items():
        row = re.search(rf'<td class="name">{host}</td>.*?</tr>', text, re.S)
        assert row, f"{host} has no row"
        cells = [
            html.unescape(re.sub("<[^>]+>", "", cell)).strip()
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", row[0], re.S)
        ]
        assert cells[3].split(" ")[0] == (version or "none"), cells
    assert f"<h1>Fleet status: {len(versions)} hosts</h1>" in text
    screenshot(page, "fleet-status", height=900)
