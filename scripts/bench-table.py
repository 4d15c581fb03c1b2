#!/usr/bin/env python3
"""Turns criterion results (target/criterion) into the BENCHMARKS.md table: per op, device and
size, GB/s of each variant against the op's byte floor, fused-vs-eager speed-up, and fused as a
fraction of the copy floor. Usage: scripts/bench-table.py [CRITERION_DIR]"""
import json, os, sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
rows = {}
for group in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    gdir = os.path.join(root, group)
    for func in sorted(os.listdir(gdir)):
        fdir = os.path.join(gdir, func)
        if not os.path.isdir(fdir) or func == "report":
            continue
        for size in os.listdir(fdir):
            est = os.path.join(fdir, size, "new", "estimates.json")
            bm = os.path.join(fdir, size, "new", "benchmark.json")
            if not (os.path.exists(est) and os.path.exists(bm)):
                continue
            t_ns = json.load(open(est))["median"]["point_estimate"]
            thr = json.load(open(bm)).get("throughput") or {}
            nbytes = thr.get("Bytes") or thr.get("BytesDecimal") or 0
            rows.setdefault((group, int(size)), {})[func] = (t_ns, nbytes)

print("| op / device | MiB (x, f32) | variant | median time | GB/s vs floor | fused ÷ eager time | fused GB/s ÷ copy GB/s |")
print("|---|---|---|---|---|---|---|")
for (group, size), v in sorted(rows.items()):
    copy = v.get("copy_floor")
    eager = v.get("eager_tch")
    for func, (t_ns, nbytes) in sorted(v.items()):
        # Groups measured in elements (paths_*) have no byte floor: "—" rather than a false 0.
        gbs = f"{nbytes / t_ns:.1f}" if t_ns and nbytes else "—"
        speed = f"{eager[0] / t_ns:.2f}× faster" if eager and func.startswith("fused") else ""
        frac = f"{(nbytes / t_ns) / (copy[1] / copy[0]) * 100:.0f}%" if copy and func.startswith("fused") else ""
        t = f"{t_ns / 1e6:.3f} ms" if t_ns >= 1e5 else f"{t_ns / 1e3:.1f} µs"
        print(f"| {group} | {size} | {func} | {t} | {gbs} | {speed} | {frac} |")
