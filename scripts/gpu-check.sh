#!/usr/bin/env bash
# The one prepared GPU check (design §6), run on the device machine from the repo root with the
# binaries of scripts/build-gpu-bins.sh carried in .gpu/. In a few minutes: GPU-vs-CPU tests,
# compute-sanitizer memcheck, racecheck and synccheck on them, GPU benchmarks (with the D2D copy floor), a table at the end.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
tl=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__)+"/lib")')
nv=$(python3 -c 'import nvidia,os;print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)/nvidia/cu13/lib
export LD_LIBRARY_PATH="$tl:$nv:${LD_LIBRARY_PATH:-}"
ldd .gpu/gpu-tests | grep "not found" && echo "missing libraries above"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
echo "== GPU tests"; start=$(date +%s)
.gpu/gpu-tests --test-threads=1 --nocapture 2>&1 | tee "$OUT/gpu-tests.log" | grep -E "^test |test result|SKIP|panicked" ; tr=${PIPESTATUS[0]}
.gpu/capi-gpu-tests --test-threads=1 --nocapture 2>&1 | tee "$OUT/capi-gpu-tests.log" | grep -E "^test |test result|SKIP|panicked" ; [ "${PIPESTATUS[0]}" = 0 ] || tr=1
# The conformance cases on both executors (host and call::Cuda), one binary per op.
for c in .gpu/call_*; do
  "$c" --test-threads=1 2>&1 | tee -a "$OUT/conformance.log" | grep -E "test result|SKIP|panicked" ; [ "${PIPESTATUS[0]}" = 0 ] || tr=1
done
echo "gpu tests: rc=$tr in $(( $(date +%s) - start )) s"
# Issue 15: the sync-free calls, the CUDA-graph capture/replay and the batched launch (tensor API
# and C ABI), picked out of the two logs above so the note can quote them.
echo "== sync-free calls, CUDA graph, batches (contract §8)"
grep -hE "^test .*(async|batch|graph)|SKIP .*(async|batch|graph)" "$OUT/gpu-tests.log" "$OUT/capi-gpu-tests.log" | tee "$OUT/issue15-tests.log"
echo "== Python package on CUDA (torch tensors through DLPack)"; start=$(date +%s)
py_site=/tmp/fj-pysite; rm -rf "$py_site"; mkdir -p "$py_site"
for w in .gpu/wheels/*.whl; do python3 -m zipfile -e "$w" "$py_site"; done
if python3 -c 'import numpy, torch; assert torch.cuda.is_available()' 2>/dev/null; then
  (cd crates/featjnd-py && PYTHONPATH="$py_site" PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -q -p no:cacheprovider tests 2>&1) | tee "$OUT/python-tests.log" | tail -n 15
  pr=${PIPESTATUS[0]}
else pr=127; echo "python3 here cannot import numpy and torch with CUDA: Python tests not run"; fi
echo "python tests: rc=$pr in $(( $(date +%s) - start )) s"
echo "== compute-sanitizer memcheck (GPU tests matching '${FEATJND_MEMCHECK_FILTER:-}', but the 4 GiB one)"; start=$(date +%s)
cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n1)
if [ -n "$cs" ]; then
  timeout "${FEATJND_MEMCHECK_SECONDS:-600}" "$cs" --tool memcheck --leak-check no --print-limit 20 --error-exitcode 9 .gpu/gpu-tests --test-threads=1 ${FEATJND_MEMCHECK_FILTER:-} --skip index_past_2_pow_31 > "$OUT/memcheck.log" 2>&1; mr=$?
  grep -E "ERROR SUMMARY|test result" "$OUT/memcheck.log"; echo "memcheck: rc=$mr in $(( $(date +%s) - start )) s"
else mr=127; echo "compute-sanitizer not found"; fi
# Issue 25: shared-memory races (racecheck) and barrier / warp-sync misuse (synccheck) on the same
# tests; FEATJND_RACECHECK_FILTER narrows them (racecheck is the slowest tool), and
# FEATJND_RACECHECK_SECONDS bounds each. The CPU emulation tier (crates/featjnd-emu) checks the same
# kernels without a GPU; these are its first check on hardware.
rr=0
for tool in racecheck synccheck; do
  echo "== compute-sanitizer $tool (GPU tests matching '${FEATJND_RACECHECK_FILTER:-}', but the 4 GiB one)"; start=$(date +%s)
  if [ -n "$cs" ]; then
    timeout "${FEATJND_RACECHECK_SECONDS:-300}" "$cs" --tool "$tool" --print-limit 20 --error-exitcode 9 .gpu/gpu-tests --test-threads=1 ${FEATJND_RACECHECK_FILTER:-} --skip index_past_2_pow_31 > "$OUT/$tool.log" 2>&1; r=$?
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" "$OUT/$tool.log"; echo "$tool: rc=$r in $(( $(date +%s) - start )) s"
    [ "$r" = 0 ] || rr=$r
  else rr=127; echo "compute-sanitizer not found"; fi
done
echo "== GPU benchmarks"; start=$(date +%s)
# FEATJND_BENCH_FILTER (a criterion filter, e.g. "/256") and FEATJND_BENCH_ARGS shorten the run;
# the serving groups alone: FEATJND_BENCH_FILTER='serving|batch16|paths'.
FEATJND_BENCH_DEVICES=cuda CRITERION_HOME="$PWD/target/criterion" .gpu/ops-bench --bench --noplot ${FEATJND_BENCH_ARGS:-} ${FEATJND_BENCH_FILTER:-} > "$OUT/bench.log" 2>&1; br=$?
echo "bench: rc=$br in $(( $(date +%s) - start )) s"
python3 .gpu/bench-table.py target/criterion | tee "$OUT/bench-table.md"
echo "== summary: tests rc=$tr, python rc=$pr, memcheck rc=$mr, racecheck/synccheck rc=$rr, bench rc=$br"
[ "$tr" = 0 ] && [ "$pr" = 0 ] && [ "$mr" = 0 ] && [ "$rr" = 0 ] && [ "$br" = 0 ]
