#!/usr/bin/env python3
"""Writes `config.sharpen = A` into a copy of an estimator checkpoint, leaving the weights and the
scale alone: a validation candidate for the matched-NRMSE study, where the scale of J cancels
(docs/real-backbones.md §1, "Sharpening"). Not for use as a tolerance: the adopted checkpoints are
made with `featjnd train-jnd --recalibrate --sharpen A`, which sets the scale at the constraint.

usage: tools/sharpen_candidate.py CHECKPOINT A   (edits CHECKPOINT in place: pass a copy)
"""
import json
import struct
import sys


def main(path: str, a: float) -> None:
    if not (a > 0 and a <= 16):
        sys.exit(f"sharpen {a}: must be > 0 and <= 16")
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["featjnd"])
    meta["config"]["sharpen"] = a
    meta["metrics"]["sharpen"] = a
    meta["command"] += f"; then tools/sharpen_candidate.py {a} (validation candidate: scale not set again)"
    header["__metadata__"]["featjnd"] = json.dumps(meta)
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + raw[8 + n :])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], float(sys.argv[2]))
