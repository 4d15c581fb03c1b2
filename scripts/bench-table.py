#!/usr/bin/env python3
"""Turns criterion results (target/criterion) into the BENCHMARKS.md tables.

Default: per op, device and size, GB/s of each variant against the op's byte floor, fused-vs-eager
speed-up, and fused as a fraction of the copy floor. With --codec: the `.fjq` codec's table
(benches/codec.rs, groups codec_encode / codec_decode): per direction and size, M elements/s of each
variant, its speed against version 2 and its time against the memcpy floor.
Usage: scripts/bench-table.py [--codec] [CRITERION_DIR]"""
import json, os, sys

args = [a for a in sys.argv[1:] if a != "--codec"]
codec = "--codec" in sys.argv[1:]
root = args[0] if args else "target/criterion"


def read(root, groups=None):
    """{(group, size): {variant: (median ns, throughput bytes, throughput elements)}}."""
    rows = {}
    names = groups if groups is not None else (sorted(os.listdir(root)) if os.path.isdir(root) else [])
    for group in names:
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
                thr = json.load(open(bm)).get("throughput") or {}
                nbytes = thr.get("Bytes") or thr.get("BytesDecimal") or 0
                rows.setdefault((group, int(size)), {})[func] = (t_ns, nbytes, thr.get("Elements", 0))
    return rows


def time(t_ns, digits):
    return f"{t_ns / 1e6:.{digits}f} ms" if t_ns >= 1e5 else f"{t_ns / 1e3:.1f} µs"


if codec:
    rows = read(root, ("codec_encode", "codec_decode"))
    order = ["memcpy", "v2", "v3_full", "v3", "v3_into"]
    print("| direction | MiB (f32) | variant | median time | M elements/s | × v2 | time ÷ memcpy |")
    print("|---|---|---|---|---|---|---|")
    for (group, size), v in sorted(rows.items(), key=lambda r: (r[0][0] != "codec_encode", r[0][1])):
        v2, cp = v.get("v2"), v.get("memcpy")
        for func in sorted(v, key=lambda f: order.index(f) if f in order else 99):
            t_ns, _, n = v[func]
            rate = f"{n / t_ns * 1e3:.0f}" if n else "—"
            vs2 = f"{v2[0] / t_ns:.1f}×" if v2 and func.startswith("v3") else ""
            vcp = f"{t_ns / cp[0]:.1f}" if cp and func != "memcpy" else ""
            print(f"| {group.removeprefix('codec_')} | {size} | {func} | {time(t_ns, 2)} | {rate} | {vs2} | {vcp} |")
else:
    rows = read(root)
    print("| op / device | MiB (x, f32) | variant | median time | GB/s vs floor | fused ÷ eager time | fused GB/s ÷ copy GB/s |")
    print("|---|---|---|---|---|---|---|")
    for (group, size), v in sorted(rows.items()):
        copy = v.get("copy_floor")
        eager = v.get("eager_tch")
        for func, (t_ns, nbytes, _) in sorted(v.items()):
            # Groups measured in elements (paths_*) have no byte floor: "—" rather than a false 0.
            gbs = f"{nbytes / t_ns:.1f}" if t_ns and nbytes else "—"
            speed = f"{eager[0] / t_ns:.2f}× faster" if eager and func.startswith("fused") else ""
            frac = f"{(nbytes / t_ns) / (copy[1] / copy[0]) * 100:.0f}%" if copy and func.startswith("fused") else ""
            print(f"| {group} | {size} | {func} | {time(t_ns, 3)} | {gbs} | {speed} | {frac} |")
