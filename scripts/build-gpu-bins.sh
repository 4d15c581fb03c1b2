#!/usr/bin/env bash
# Builds the GPU test binary and the bench binary here (release, x86-64), strips them and puts
# them in .gpu/ (git-ignored) for the device machine, which has no Rust: carry `.gpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
mkdir -p .gpu
exe() { grep -o '"executable":"[^"]*"' | tail -n1 | cut -d'"' -f4; }
t=$(cargo test --release --no-run --test gpu --message-format=json 2>/dev/null | grep '"name":"gpu"' | exe)
b=$(cargo bench --no-run --bench ops --message-format=json 2>/dev/null | grep '"name":"ops"' | exe)
cp "$t" .gpu/gpu-tests; cp "$b" .gpu/ops-bench
strip .gpu/gpu-tests .gpu/ops-bench
cp scripts/bench-table.py .gpu/
ls -la .gpu
