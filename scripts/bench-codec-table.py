#!/usr/bin/env python3
"""Turns the criterion results of `benches/codec.rs` (target/criterion/codec_*) into the
BENCHMARKS.md table: per direction and size, M elements/s of each variant, its speed against
version 2 and its time against the memcpy floor. Usage: scripts/bench-codec-table.py [CRITERION_DIR]"""
import json, os, sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
rows = {}
for group in ("codec_encode", "codec_decode"):
    gdir = os.path.join(root, group)
    if not os.path.isdir(gdir):
        continue
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
            n = (json.load(open(bm)).get("throughput") or {}).get("Elements", 0)
            rows.setdefault((group, int(size)), {})[func] = (t_ns, n)

order = ["memcpy", "v2", "v3_full", "v3", "v3_into"]
print("| direction | MiB (f32) | variant | median time | M elements/s | × v2 | time ÷ memcpy |")
print("|---|---|---|---|---|---|---|")
for (group, size), v in sorted(rows.items(), key=lambda r: (r[0][0] != "codec_encode", r[0][1])):
    v2, cp = v.get("v2"), v.get("memcpy")
    for func in sorted(v, key=lambda f: order.index(f) if f in order else 99):
        t_ns, n = v[func]
        rate = f"{n / t_ns * 1e3:.0f}" if n else "—"
        vs2 = f"{v2[0] / t_ns:.1f}×" if v2 and func.startswith("v3") else ""
        vcp = f"{t_ns / cp[0]:.1f}" if cp and func != "memcpy" else ""
        t = f"{t_ns / 1e6:.2f} ms" if t_ns >= 1e5 else f"{t_ns / 1e3:.1f} µs"
        print(f"| {group.removeprefix('codec_')} | {size} | {func} | {t} | {rate} | {vs2} | {vcp} |")
