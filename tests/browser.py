"""Pages checked as a person sees them: in a real headless browser (Debian's chromium,
installed by `make setup`), with no console error, and a screenshot kept with the test's
output (tests/output/)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent / "output"


def screenshot(page: Path, name: str, width: int = 1280, height: int = 720) -> Path:
    """Open PAGE in headless chromium, fail on any console message or a blank picture, and
    keep its screenshot as tests/output/NAME.png."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is missing: make setup installs it (scripts/install-system-packages.sh)"
    OUTPUT.mkdir(parents=True, exist_ok=True)
    picture = OUTPUT / f"{name}.png"
    picture.unlink(missing_ok=True)
    run = subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            f"--window-size={width},{height}",
            f"--screenshot={picture}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    png = picture.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n", f"{picture} is no PNG"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (width, height)
    assert len(png) > 10_000, f"{picture} is (nearly) blank"
    return picture
