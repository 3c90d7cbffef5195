#!/usr/bin/env python3
"""Pack an installed collection (one of the `ansible` package's) as a Galaxy artifact.

Galaxy is not reachable here, so the lab's execution environment installs its dependency
collections from tarballs (playbooks/build_ee.yml). An installed collection cannot just be
tarred up: the `ansible` package drops files (tests/) that its FILES.json still lists, and
`ansible-galaxy collection install` refuses such an artifact. So: a copy, with a galaxy.yml
made from its MANIFEST.json, built by `ansible-galaxy collection build` as its authors would.

    pack-installed-collection.py INSTALLED_DIR OUTPUT_DIR   # prints the tarball's path
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# galaxy.yml's keys, as MANIFEST.json's collection_info carries them.
GALAXY_KEYS = (
    "namespace", "name", "version", "readme", "authors", "description", "license", "license_file",
    "tags", "dependencies", "repository", "documentation", "homepage", "issues",
)


def pack(installed: Path, output: Path) -> Path:
    info = json.loads((installed / "MANIFEST.json").read_text())["collection_info"]
    galaxy = {key: info[key] for key in GALAXY_KEYS if info.get(key) not in (None, [], {}, "")}
    if galaxy.get("license"):
        galaxy.pop("license_file", None)
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "collection"
        shutil.copytree(installed, copy, ignore=shutil.ignore_patterns("__pycache__", "MANIFEST.json", "FILES.json"))
        (copy / "galaxy.yml").write_text(json.dumps(galaxy, indent=2))
        output.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ansible-galaxy", "collection", "build", "--force", "--output-path", str(output), str(copy)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return output / f"{info['namespace']}-{info['name']}-{info['version']}.tar.gz"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    print(pack(Path(sys.argv[1]), Path(sys.argv[2])))
