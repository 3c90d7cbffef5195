"""The fleet page (playbooks/fleet_status.yml) on the lab fleet: what it shows for each host
is what the host answers over HTTP, and it renders in a real headless browser
(tests/browser.py; the screenshot is tests/output/fleet-status.png)."""

from __future__ import annotations

import requests
from browser import screenshot
from fleetpage import fleet_page
from labtools import serving_versions


def _psi(url: str) -> float | None:
    samples = [line for line in requests.get(f"{url}/metrics", timeout=5).text.splitlines()
               if line.startswith("edgeml_drift_psi{")]
    return float(samples[0].rsplit(" ", 1)[1]) if samples else None


def test_the_fleet_page_shows_what_every_host_serves(fleet_serving):
    page, rows = fleet_page()
    fleet = fleet_serving
    versions = serving_versions(fleet)
    for host, version in versions.items():
        assert host in rows, f"{host} has no row"
        cells = rows[host]
        assert cells[3].split(" ")[0] == (version or "none"), cells
        # The drift column is the host's own figure (none: too few rows, or no profile).
        psi = _psi(fleet[host])
        shown = cells[9].split(" ")[0]
        assert shown == "-" if psi is None else abs(float(shown) - psi) < 0.01, (cells, psi)
    assert f"<h1>Fleet status: {len(versions)} hosts</h1>" in page.read_text()
    screenshot(page, "fleet-status", height=900)
