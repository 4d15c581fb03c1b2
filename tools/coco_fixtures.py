#!/usr/bin/env python3
"""Writes the COCO fixtures of tests/coco.rs into tests/data/coco/.

Each case is <case>.gt.json (COCO ground truth) and <case>.dt.json (a detection list). When
pycocotools is importable, COCOeval(iouType="bbox") runs on each bbox case and its 12 summary
numbers go to <case>.expected.json; for the segm cases COCOeval(iouType="segm") writes
<case>.segm.expected.json. The segm cases and rle_primitives.json (polygon rasterisation, RLE
strings, areas and mask IoUs of maskUtils) need pycocotools to be written at all. The committed
expected files were produced by pycocotools 2.0.11
(numpy 2.4.6, Python 3.11.7), installed only for this:

    python3 -m pip install --target /tmp/pycoco pycocotools numpy
    PYTHONPATH=/tmp/pycoco python3 tools/coco_fixtures.py
"""
import contextlib
import io
import json
import os
import random

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "coco")


def gt(img_ids, cat_ids, anns):
    """anns: (id, image_id, category_id, bbox, area, iscrowd[, extra fields])."""
    out = []
    for a in anns:
        d = {"id": a[0], "image_id": a[1], "category_id": a[2], "bbox": a[3], "area": a[4], "iscrowd": a[5]}
        d.update(a[6] if len(a) > 6 else {})
        out.append(d)
    return {
        "images": [{"id": i, "width": 640, "height": 480} for i in img_ids],
        "categories": [{"id": c, "name": f"cat{c}"} for c in cat_ids],
        "annotations": out,
    }


def dt(dets):
    """dets: (image_id, category_id, bbox, score)."""
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in dets]


def basic():
    # Perfect, shifted and duplicate detections, misses, a category (3) with detections but no GT,
    # an image (3) without GT, a score tie across images.
    g = gt([1, 2, 3], [1, 2, 3], [
        (1, 1, 1, [10, 10, 50, 100], 5000, 0),
        (2, 1, 1, [200, 50, 120, 200], 24000, 0),
        (3, 1, 2, [300, 300, 20, 15], 300, 0),
        (4, 2, 1, [50, 50, 80, 80], 6000, 0),
        (5, 2, 2, [100, 200, 200, 100], 20000, 0),
        (6, 2, 2, [400, 10, 10, 10], 100, 0),
    ])
    d = dt([
        (1, 1, [10, 10, 50, 100], 0.9),
        (1, 1, [220, 60, 120, 200], 0.8),
        (1, 1, [12, 12, 50, 100], 0.7),
        (1, 2, [302, 301, 20, 15], 0.6),
        (1, 3, [0, 0, 30, 30], 0.5),
        (2, 1, [55, 48, 80, 80], 0.95),
        (2, 2, [400, 10, 10, 10], 0.6),
        (2, 1, [500, 400, 40, 40], 0.3),
        (3, 2, [10, 10, 40, 40], 0.85),
    ])
    return g, d


def crowd():
    # A crowd region that absorbs detections inside it (IoU = inter / det area), a GT with an
    # `ignore` flag (pycocotools overwrites it with iscrowd, so it still counts), and a GT with id 0
    # (pycocotools stores matches by GT id and tests != 0, so a match to it counts as a miss).
    g = gt([10, 11], [1], [
        (1, 10, 1, [0, 0, 200, 200], 30000, 1),
        (2, 10, 1, [20, 20, 40, 80], 3000, 0),
        (3, 10, 1, [300, 300, 60, 60], 3400, 0, {"ignore": 1}),
        (0, 11, 1, [10, 10, 100, 100], 10000, 0),
        (7, 11, 1, [200, 0, 100, 100], 9000, 1),
        (8, 11, 1, [400, 300, 50, 50], 2400, 0),
    ])
    d = dt([
        (10, 1, [22, 20, 40, 80], 0.9),
        (10, 1, [100, 100, 50, 50], 0.8),
        (10, 1, [150, 150, 60, 60], 0.7),
        (10, 1, [20, 22, 40, 80], 0.6),
        (10, 1, [300, 300, 60, 60], 0.5),
        (11, 1, [10, 10, 100, 100], 0.8),
        (11, 1, [205, 5, 90, 90], 0.4),
        (11, 1, [402, 298, 50, 52], 0.75),
        (11, 1, [190, 0, 40, 40], 0.2),
    ])
    return g, d


def sizes():
    # Area ranges: GT area comes from the `area` field (not the box), detection area is w*h;
    # boundaries 32^2 and 96^2 belong to both neighbouring ranges; unmatched detections outside a
    # range are ignored there.
    g = gt([20, 21], [1, 2], [
        (1, 20, 1, [0, 0, 20, 20], 350, 0),
        (2, 20, 1, [50, 0, 32, 32], 1024, 0),
        (3, 20, 1, [100, 100, 60, 60], 3000, 0),
        (4, 20, 1, [200, 200, 96, 96], 9216, 0),
        (5, 20, 1, [300, 300, 150, 150], 20000, 0),
        (6, 20, 2, [500, 0, 100, 100], 900, 0),
        (7, 21, 2, [10, 10, 8, 8], 64, 0),
        (8, 21, 2, [100, 100, 200, 150], 28000, 0),
    ])
    d = dt([
        (20, 1, [1, 1, 20, 20], 0.9),
        (20, 1, [51, 1, 32, 32], 0.9),
        (20, 1, [104, 100, 60, 60], 0.8),
        (20, 1, [210, 205, 96, 96], 0.7),
        (20, 1, [300, 300, 140, 150], 0.6),
        (20, 1, [600, 400, 10, 10], 0.85),
        (20, 1, [0, 300, 200, 150], 0.65),
        (20, 2, [502, 2, 100, 100], 0.5),
        (21, 2, [11, 10, 8, 8], 0.7),
        (21, 2, [100, 100, 190, 150], 0.7),
        (21, 2, [400, 400, 30, 30], 0.9),
    ])
    return g, d


def many():
    # Seeded random scenes: several images and categories, crowd GTs, >100 detections in one
    # image/category (maxDets truncation), scores rounded to 2 decimals (ties).
    rnd = random.Random(7)
    img_ids, cat_ids = [31, 32, 33, 34, 35], [1, 2, 4]
    anns, dets, aid = [], [], 1
    for img in img_ids:
        for cat in cat_ids:
            n = 14 if (img, cat) == (31, 1) else rnd.randint(0, 4)
            boxes = []
            for _ in range(n):
                w, h = rnd.choice([rnd.uniform(4, 30), rnd.uniform(30, 95), rnd.uniform(95, 300)]), rnd.uniform(5, 200)
                x, y = rnd.uniform(0, 640 - w), rnd.uniform(0, 480 - min(h, 479))
                b = [round(x, 2), round(y, 2), round(w, 2), round(h, 2)]
                crowd = 1 if rnd.random() < 0.08 else 0
                anns.append((aid, img, cat, b, round(b[2] * b[3] * rnd.uniform(0.55, 1.0), 2), crowd))
                boxes.append(b)
                aid += 1
            for b in boxes:
                for _ in range(rnd.choice([0, 1, 1, 2, 3])):
                    j = [v + rnd.gauss(0, 0.08) * s for v, s in zip(b, [b[2], b[3], b[2], b[3]])]
                    j[2], j[3] = max(j[2], 1.0), max(j[3], 1.0)
                    dets.append((img, cat, [round(v, 2) for v in j], round(rnd.random(), 2)))
            extra = 120 if (img, cat) == (31, 1) else rnd.randint(0, 3)
            for _ in range(extra):
                w, h = rnd.uniform(3, 250), rnd.uniform(3, 250)
                b = [round(rnd.uniform(0, 600), 2), round(rnd.uniform(0, 440), 2), round(w, 2), round(h, 2)]
                dets.append((img, cat, b, round(rnd.random() * 0.6, 2)))
    rnd.shuffle(dets)
    return gt(img_ids, cat_ids, anns), dt(dets)


CASES = {"basic": basic, "crowd": crowd, "sizes": sizes, "many": many}


def dump(path, obj):
    """One annotation or detection per line: small diffs, still valid JSON."""
    def lines(items):
        return "[\n" + ",\n".join("  " + json.dumps(x) for x in items) + "\n]"
    if isinstance(obj, list):
        text = lines(obj)
    else:
        text = "{\n" + ",\n".join(f' "{k}": {lines(v)}' for k, v in obj.items()) + "\n}"
    with open(path, "w") as f:
        f.write(text + "\n")


def polygon_primitives():
    """Polygons (h, w, [[x1, y1, ...], ...]) for rle_primitives.json: fractional, negative and
    out-of-image coordinates, a repeated vertex, concave shapes, a multi-part polygon (merged)."""
    rnd = random.Random(11)
    polys = [
        (5, 5, [[1, 1, 3, 1, 3, 3, 1, 3]]),
        (10, 12, [[0.3, 0.2, 9.7, 1.4, 4.5, 8.9]]),
        (20, 30, [[-5, -3, 40, 2.5, 25.25, 27.5, 3, 3, 3, 3, 0.49, 12]]),
        (16, 16, [[2, 2, 14, 2, 14, 14, 8, 6, 2, 14]]),
        (24, 20, [[1, 1, 8, 1, 8, 8, 1, 8], [6.5, 6.5, 15.5, 7, 12, 19.5]]),
        (7, 9, [[0, 0, 0.1, 0, 0.1, 0.1]]),
    ]
    for _ in range(5):
        h, w = rnd.randint(8, 60), rnd.randint(8, 60)
        k = rnd.randint(3, 9)
        polys.append((h, w, [[round(rnd.uniform(-3, w + 3), 2) if i % 2 == 0 else round(rnd.uniform(-3, h + 3), 2)
                              for i in range(2 * k)]]))
    return polys


def runs(mask):
    """Column-major run lengths of a 0/1 mask, starting with 0s."""
    flat = mask.flatten(order="F")
    out, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            out.append(n)
            cur, n = v, 0
        n += 1
    out.append(n)
    return [int(c) for c in out]


def primitives():
    from pycocotools import mask as mu
    polys = []
    for h, w, p in polygon_primitives():
        rle = mu.merge(mu.frPyObjects(p, h, w))
        polys.append({"h": h, "w": w, "polygons": p, "counts": runs(mu.decode(rle)),
                      "string": rle["counts"].decode(), "area": int(mu.area(rle))})
    # Uncompressed RLE -> string: long runs, and runs that shrink (negative deltas).
    uncompressed = []
    for h, w, counts in [(100, 300, [0, 5, 29000, 3, 990, 2]), (4, 5, [7, 0, 0, 13]), (1000, 1000, [123456, 1, 876543])]:
        rle = mu.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        uncompressed.append({"h": h, "w": w, "counts": counts, "string": rle["counts"].decode(), "area": int(mu.area(rle))})
    # Mask IoUs of the polygon masks of one size, crowd or not.
    h, w = 30, 40
    shapes = [[[2, 2, 20, 3, 18, 25, 4, 20]], [[10, 5, 35, 5, 35, 28, 10, 28]], [[5.5, 5.5, 9.5, 5.5, 7, 9]], [[30, 1, 39, 1, 39, 6]]]
    rles = [mu.merge(mu.frPyObjects(p, h, w)) for p in shapes]
    ious = []
    for crowd in [0, 1]:
        m = mu.iou(rles, rles, [crowd] * len(rles))
        ious.append({"crowd": crowd, "iou": [[float(v) for v in row] for row in m]})
    return {"pycocotools": version_of(), "polygons": polys, "uncompressed": uncompressed,
            "iou": {"h": h, "w": w, "shapes": shapes, "dt_by_gt": ious}}


def version_of():
    from importlib.metadata import version
    return version("pycocotools")


def jitter(rnd, poly, s):
    return [round(v + rnd.gauss(0, s), 2) for v in poly]


def rle_json(rle):
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def masks():
    """segm: polygon GTs (one in two parts), a compressed-RLE GT, a crowd GT as uncompressed RLE, GT
    `area` fields off the mask area (they set the area range), small/medium/large objects, and
    detections as compressed RLE without boxes (their area is the mask's)."""
    from pycocotools import mask as mu
    H, W = 150, 200
    rnd = random.Random(5)
    crowd = {"size": [H, W], "counts": []}
    m = [[0] * W for _ in range(H)]
    for x in range(120, 190):
        for y in range(90, 140 - (x % 7)):
            m[y][x] = 1
    import numpy as np
    crowd["counts"] = runs(np.array(m, dtype=np.uint8))
    shapes = {  # id: (image, category, polygons, area field or None for the mask area)
        1: (1, 1, [[10, 10, 60, 12, 55, 70, 12, 60]], None),
        2: (1, 1, [[70, 20, 100, 20, 100, 40, 70, 40], [102, 20, 110, 20, 110, 45]], None),
        3: (1, 2, [[5, 100, 15, 100, 15, 110, 5, 110]], 1500),
        4: (2, 1, [[20, 20, 180, 25, 170, 140, 30, 130]], None),
        5: (2, 2, [[150, 5, 170, 5, 160, 25]], None),
        6: (2, 1, [[5, 5, 12, 5, 12, 11, 5, 11]], None),
    }
    anns, dets = [], []
    for aid, (img, cat, polys, area) in shapes.items():
        rle = mu.merge(mu.frPyObjects(polys, H, W))
        seg = rle_json(rle) if aid == 4 else polys
        a = float(mu.area(rle)) if area is None else area
        anns.append({"id": aid, "image_id": img, "category_id": cat, "bbox": [float(v) for v in mu.toBbox(rle)],
                     "area": a, "iscrowd": 0, "segmentation": seg})
        for s, jit in [(0.9, 0.5), (0.6, 3.0), (0.3, 8.0)][: 1 + aid % 3]:
            d = mu.merge(mu.frPyObjects([jitter(rnd, p, jit) for p in polys], H, W))
            dets.append({"image_id": img, "category_id": cat, "segmentation": rle_json(d), "score": round(s * rnd.uniform(0.8, 1.0), 3)})
    anns.append({"id": 7, "image_id": 1, "category_id": 1, "bbox": [120, 90, 70, 50], "area": float(mu.area(mu.frPyObjects(crowd, H, W))),
                 "iscrowd": 1, "segmentation": crowd})
    for poly, s in [([130, 95, 150, 95, 150, 110, 130, 110], 0.8), ([180, 120, 199, 120, 199, 149], 0.7), ([0, 140, 8, 140, 8, 149], 0.95)]:
        d = mu.merge(mu.frPyObjects([poly], H, W))
        dets.append({"image_id": 1, "category_id": 1, "segmentation": rle_json(d), "score": s})
    g = {"images": [{"id": i, "width": W, "height": H} for i in [1, 2]],
         "categories": [{"id": c, "name": f"cat{c}"} for c in [1, 2]], "annotations": anns}
    return g, dets


def maskboxes():
    """segm with detections that carry boxes: the first one has a bbox, so COCO.loadRes takes every
    detection's area from its box (not its mask) and gives one without segmentation its box as a
    polygon mask; detection masks come as polygons and uncompressed RLE too."""
    from pycocotools import mask as mu
    H, W = 120, 160
    gpolys = {
        1: (1, [[10, 10, 50, 10, 50, 40, 10, 40]]),
        2: (1, [[60, 60, 150, 62, 140, 115, 65, 110]]),
        3: (2, [[5, 5, 25, 8, 15, 30]]),
        4: (2, [[100, 10, 130, 10, 130, 15, 100, 15]]),
    }
    anns = []
    for aid, (img, polys) in gpolys.items():
        rle = mu.merge(mu.frPyObjects(polys, H, W))
        anns.append({"id": aid, "image_id": img, "category_id": 1, "area": float(mu.area(rle)), "iscrowd": 0, "segmentation": polys})
    unc = mu.decode(mu.merge(mu.frPyObjects([[98, 9, 131, 9, 131, 16, 98, 16]], H, W)))
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 30], "segmentation": [[11, 10, 50, 10, 50, 40, 11, 40]], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [60, 58, 90, 60], "score": 0.8},
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 30, 20], "segmentation": [[12, 12, 20, 12, 20, 20]], "score": 0.85},
        {"image_id": 2, "category_id": 1, "bbox": [5, 5, 20, 25], "segmentation": [[5, 5, 25, 8, 15, 31]], "score": 0.7},
        {"image_id": 2, "category_id": 1, "bbox": [98, 9, 33, 7], "segmentation": {"size": [H, W], "counts": runs(unc)}, "score": 0.6},
        {"image_id": 2, "category_id": 1, "bbox": [100, 50, 10, 10], "score": 0.95},
    ]
    g = {"images": [{"id": i, "width": W, "height": H} for i in [1, 2]], "categories": [{"id": 1, "name": "cat1"}], "annotations": anns}
    return g, dets


SEGM_CASES = {"masks": masks, "maskboxes": maskboxes}


def expected(gt_path, dt_path, iou_type="bbox"):
    from importlib.metadata import version
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(gt_path)
        e = COCOeval(cg, cg.loadRes(dt_path), iouType=iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return {"pycocotools": version("pycocotools"), "stats": [float(s) for s in e.stats]}


def main():
    os.makedirs(OUT, exist_ok=True)
    try:
        import pycocotools  # noqa: F401
        have = True
    except ImportError:
        have = False
        print("pycocotools not importable: writing fixtures only")
    for name, make in CASES.items():
        g, d = make()
        gp, dp = os.path.join(OUT, f"{name}.gt.json"), os.path.join(OUT, f"{name}.dt.json")
        dump(gp, g)
        dump(dp, d)
        if have:
            exp = expected(gp, dp)
            with open(os.path.join(OUT, f"{name}.expected.json"), "w") as f:
                json.dump(exp, f, indent=1)
                f.write("\n")
            print(name, " ".join(f"{s:.4f}" for s in exp["stats"]))
    if not have:
        return
    for name, make in SEGM_CASES.items():
        g, d = make()
        gp, dp = os.path.join(OUT, f"{name}.gt.json"), os.path.join(OUT, f"{name}.dt.json")
        dump(gp, g)
        dump(dp, d)
        exp = expected(gp, dp, "segm")
        with open(os.path.join(OUT, f"{name}.segm.expected.json"), "w") as f:
            json.dump(exp, f, indent=1)
            f.write("\n")
        print(name, "segm", " ".join(f"{s:.4f}" for s in exp["stats"]))
    with open(os.path.join(OUT, "rle_primitives.json"), "w") as f:
        json.dump(primitives(), f)
        f.write("\n")


if __name__ == "__main__":
    main()
