#!/usr/bin/env python3
"""Turn photos into NanoDet input tensors (.npy, float32), as docs/nanodet.md specifies.

    python3 tools/make_input.py --out DIR IMG...           # DIR/STEM.npy, [1, 3, 416, 416]
    python3 tools/make_input.py --layout nhwc --out DIR IMG  # [1, 416, 416, 3]

The rule (the Rust side must use the same one):
  1. decode to 8-bit RGB (no EXIF rotation: the corpus PNGs are already upright) and scale to
     float32 in [0, 1] (value / 255);
  2. stretch to 416x416 (no letterbox, aspect ratio not kept) with an antialiased bilinear
     (triangle) filter, pixel centres aligned: PIL's BILINEAR on float ("F") planes, which is the
     filter of the `image` crate's `imageops::resize(.., FilterType::Triangle)` on Rgb32F;
  3. multiply by 255, reorder the channels to BGR and normalise each with the ImageNet statistics
     in BGR order: (x - mean) / std, mean = (103.53, 116.28, 123.675), std = (57.375, 57.12, 58.395);
  4. NCHW [1, 3, 416, 416] (the graph's input layout) unless --layout nhwc.
Detections map back to the photo by x * W / 416 and y * H / 416.

Needs numpy and Pillow (scripts/fetch-real.sh puts a pinned Pillow into .deps/py; this script adds
that folder to sys.path when it exists).
"""
import argparse
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PY = os.path.join(_REPO, ".deps", "py")
if os.path.isdir(_PY):
    sys.path.append(_PY)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SIZE = 416
MEAN_BGR = np.array([103.53, 116.28, 123.675], dtype=np.float32)
STD_BGR = np.array([57.375, 57.12, 58.395], dtype=np.float32)


def resize_plane(plane, size):
    """Antialiased bilinear resize of one float32 plane (PIL BILINEAR in mode F)."""
    img = Image.fromarray(plane.astype(np.float32, copy=False), mode="F")
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def preprocess(path, size=SIZE, layout="nchw"):
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    h, w = rgb.shape[:2]
    x = rgb.astype(np.float32) / np.float32(255.0)
    planes = [resize_plane(x[:, :, c], size) for c in range(3)]  # R, G, B
    bgr = np.stack(planes[::-1], axis=0) * np.float32(255.0)  # [3, size, size]
    bgr = (bgr - MEAN_BGR[:, None, None]) / STD_BGR[:, None, None]
    out = bgr[None] if layout == "nchw" else bgr.transpose(1, 2, 0)[None]
    return np.ascontiguousarray(out, dtype=np.float32), (w, h)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="+")
    ap.add_argument("--out", required=True, help="output folder (STEM.npy per image)")
    ap.add_argument("--size", type=int, default=SIZE)
    ap.add_argument("--layout", choices=["nchw", "nhwc"], default="nchw")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for p in a.images:
        t, (w, h) = preprocess(p, a.size, a.layout)
        stem = os.path.splitext(os.path.basename(p))[0]
        dst = os.path.join(a.out, stem + ".npy")
        np.save(dst, t)
        print(f"{p}: {w}x{h} -> {dst} {list(t.shape)} min {t.min():.3f} max {t.max():.3f} mean {t.mean():.3f}")


if __name__ == "__main__":
    main()
