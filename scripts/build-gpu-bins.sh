#!/usr/bin/env bash
# Builds the GPU test binaries (the kernel library's tensor API, and the C ABI on device pointers)
# and the bench binary here (release, x86-64), strips them and puts them in .gpu/ (git-ignored)
# for the device machine, which has no Rust: carry `.gpu`. Also the featjnd binary for
# scripts/gpu-pipeline.sh, with the font its plots need there (text is drawn in Rust: no
# fontconfig/freetype libraries to carry).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
mkdir -p .gpu
exe() { grep -o '"executable":"[^"]*"' | tail -n1 | cut -d'"' -f4; }
t=$(cargo test --release --no-run -p featjnd-kernels --test gpu --message-format=json 2>/dev/null | grep '"name":"gpu"' | exe)
c=$(cargo test --release --no-run -p featjnd-capi --features torch-tests --test gpu --message-format=json 2>/dev/null | grep '"name":"gpu"' | exe)
b=$(cargo bench --no-run -p featjnd-kernels --bench ops --message-format=json 2>/dev/null | grep '"name":"ops"' | exe)
cp "$t" .gpu/gpu-tests; cp "$c" .gpu/capi-gpu-tests; cp "$b" .gpu/ops-bench
# The conformance cases (tests/call_*.rs): the same cases on the host and on call::Cuda.
for f in tests/call_*.rs; do
  n=$(basename "$f" .rs)
  e=$(cargo test --release --no-run -p featjnd-kernels --test "$n" --message-format=json 2>/dev/null | grep "\"name\":\"$n\"" | exe)
  cp "$e" ".gpu/$n" && strip ".gpu/$n"
done
cargo build --release -p featjnd-research --bin featjnd 2>/dev/null && cp target/release/featjnd .gpu/featjnd
strip .gpu/gpu-tests .gpu/capi-gpu-tests .gpu/ops-bench .gpu/featjnd
# The font of the plots (the device image has none); gpu-pipeline.sh sets FEATJND_FONT to it.
mkdir -p .gpu/fonts
cp /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf .gpu/fonts/
cp scripts/bench-table.py .gpu/
# The Python package (abi3 wheel) and pytest's pure-Python wheels, for its CUDA tests there
# (crates/featjnd-py/tests/test_cuda.py); gpu-check.sh unpacks them onto PYTHONPATH (no network there).
bash scripts/test-python.sh -q >/dev/null
rm -rf .gpu/wheels && mkdir -p .gpu/wheels
cp "$(ls -t target/wheels/featjnd-*.whl | head -n1)" .gpu/wheels/
.deps/pyenv/bin/python -m pip download -q --disable-pip-version-check --only-binary=:all: --no-deps -d .gpu/wheels \
  pytest==8.3.5 pluggy==1.5.0 iniconfig==2.0.0 packaging==24.2
ls -la .gpu
