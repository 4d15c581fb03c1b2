#!/usr/bin/env bash
# Nsight Compute on the device machine: achieved bandwidth and occupancy of the fused quantize
# chain and the perturbation kernels at 256 MiB (first launches only), plus an Nsight Systems-style
# check that the NVTX library is found. Binaries from scripts/build-gpu-bins.sh in .gpu/.
set -uo pipefail
OUT=${OUT:-/tmp/ncu-check}; mkdir -p "$OUT"
tl=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__)+"/lib")')
nv=$(python3 -c 'import nvidia,os;print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)/nvidia/cu13/lib
export LD_LIBRARY_PATH="$tl:$nv:${LD_LIBRARY_PATH:-}"
ls "$nv" | grep -i nvtools || echo "no libnvToolsExt in $nv: NVTX ranges are no-ops here"
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -n1)
run() { # $1 = criterion filter, $2 = kernel regex, $3 = launches, $4 = report name
  FEATJND_BENCH_DEVICES=cuda timeout 150 "$ncu" --target-processes all -k "regex:$2" --launch-count "$3" \
    --section SpeedOfLight --section Occupancy --section MemoryWorkloadAnalysis --csv --page details \
    .gpu/ops-bench --bench --noplot --warm-up-time 0.1 --measurement-time 0.5 "$1" > "$OUT/$4.csv" 2> "$OUT/$4.err"
  echo "$4: rc=$?"
  python3 - "$OUT/$4.csv" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if not rows: print("  (no rows)"); sys.exit()
h = rows[0]; ix = {k: h.index(k) for k in ("Kernel Name", "Metric Name", "Metric Unit", "Metric Value") if k in h}
want = ("Memory Throughput", "DRAM Throughput", "Duration", "Achieved Occupancy", "Theoretical Occupancy", "Registers Per Thread")
for r in rows[1:]:
    if r[ix["Metric Name"]] in want:
        print(f"  {r[ix['Kernel Name']][:40]:40s} {r[ix['Metric Name']]:24s} {r[ix['Metric Value']]:>10s} {r[ix['Metric Unit']]}")
PY
}
run 'quantize_jnd_cuda/fused/256' 'fj_(token_stats|quantize)_nchw_f32' 2 quantize
run 'perturb_cuda/fused_gaussian/256' 'fj_perturb_(norms|apply)_f32' 2 perturb
