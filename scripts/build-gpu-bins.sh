#!/usr/bin/env bash
# Builds the GPU test binary and the bench binary here (release, x86-64), strips them and puts
# them in .gpu/ (git-ignored) for the device machine, which has no Rust: carry `.gpu`. Also the
# featjnd binary for scripts/gpu-pipeline.sh, with the few libraries and the font it needs there.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
mkdir -p .gpu
exe() { grep -o '"executable":"[^"]*"' | tail -n1 | cut -d'"' -f4; }
t=$(cargo test --release --no-run --test gpu --message-format=json 2>/dev/null | grep '"name":"gpu"' | exe)
b=$(cargo bench --no-run --bench ops --message-format=json 2>/dev/null | grep '"name":"ops"' | exe)
cp "$t" .gpu/gpu-tests; cp "$b" .gpu/ops-bench
cargo build --release --bin featjnd 2>/dev/null && cp target/release/featjnd .gpu/featjnd
strip .gpu/gpu-tests .gpu/ops-bench .gpu/featjnd
# What the featjnd binary links that the device image lacks (plotters → fontconfig), and a font.
mkdir -p .gpu/lib .gpu/fonts
for l in libfontconfig.so.1 libfreetype.so.6 libexpat.so.1 libpng16.so.16 libbrotlidec.so.1 libbrotlicommon.so.1; do
  cp -L "/usr/lib/x86_64-linux-gnu/$l" .gpu/lib/
done
cp /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf .gpu/fonts/
cp scripts/bench-table.py .gpu/
ls -la .gpu
