#!/usr/bin/env python3
# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Copy a model bundle and corrupt the copy's model.onnx, AFTER it was bundled.

Usage: corrupt_bundle.py SRC_BUNDLE_DIR DEST_BUNDLE_DIR

model.json (and model.sig, when the bundle is signed) is copied unchanged, so it still
records the sha256 of the good model.
model.onnx is copied with 8 bytes in the middle of its largest weight tensor inverted:
the file still parses and loads, and answers (slightly or badly) differently - the silent
corruption that only the manifest's sha256 check catches.

Idempotent: files are rewritten only when their content would change. Prints
"changed" or "unchanged" (the playbook's changed_when reads it).
"""

from __future__ import annotations

import os
import sys
import tempfile

import onnx

FLIP = 8


def corrupt(model: bytes) -> bytes:
    proto = onnx.ModelProto()
    proto.ParseFromString(model)
    tensors = [t for t in proto.graph.initializer if len(t.raw_data) >= 2 * FLIP]
    if tensors:
        raw = max(tensors, key=lambda t: len(t.raw_data)).raw_data
        start = model.find(raw) + len(raw) // 2
    else:
        start = len(model) // 2
    data = bytearray(model)
    for index in range(start, start + FLIP):
        data[index] ^= 0xFF
    return bytes(data)


def sync(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            if handle.read() == data:
                return False
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".corrupt-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src, dest = argv
    os.makedirs(dest, mode=0o755, exist_ok=True)
    changed = False
    # Every file of the bundle (manifest, signature, profile) as it is; the model corrupted.
    for name in sorted(os.listdir(src)):
        with open(os.path.join(src, name), "rb") as handle:
            data = handle.read()
        changed = sync(os.path.join(dest, name), corrupt(data) if name == "model.onnx" else data) or changed
    print("changed" if changed else "unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
