#!/usr/bin/env bash
# Set up (idempotent), then the gates and the whole test suite, in tiers. CI runs exactly this.
#   1. cargo fmt --check, and clippy with warnings as errors over the whole workspace;
#   2. the lean graph: the kernel library without default features, the C ABI and the Python
#      package pull in no tch;
#   3. the C ABI crate (built with no libtorch at all; links libfeatjnd.a from C);
#   4. the kernel tier (`cargo test -p featjnd-kernels --all-features`: ops vs reference, errors,
#      NVRTC, ptxas resource limits (tests/ptxas.rs), the .fjq codec on slices);
#   4b. the CPU emulation tier (crates/featjnd-emu: kernels/*.cu run on the CPU as C++);
#   5. the pipeline tier (`cargo test -p featjnd-research`: models, estimator, studies, CLI);
#   6. the Python package (scripts/test-python.sh: abi3 wheel with maturin, pytest on numpy,
#      and on torch tensors where torch is importable).
# Tests that cannot run here (no GPU, data absent) print a SKIP line; they are counted at the end.
# Extra arguments go to every `cargo test` (e.g. `scripts/test.sh -- --test-threads=1`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
log=$(mktemp); trap 'rm -f "$log"' EXIT
step() { printf '\n== %s\n' "$*"; }

step "format and lints"
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings

step "lean builds carry no libtorch"
for p in "featjnd-kernels --no-default-features" "featjnd-capi" "featjnd-py"; do
  # shellcheck disable=SC2086
  if cargo tree --locked -e normal -p $p --prefix none | grep -E '^(tch|torch-sys|plotters|clap) '; then
    echo "error: cargo tree -p $p pulls in the crates above" >&2; exit 1
  fi
done
echo "ok: the kernel library without default features, the C ABI and the Python package depend on no tch, plotters or clap"

step "C ABI (no libtorch)"
cargo test --locked -p featjnd-capi "$@" 2>&1 | tee -a "$log"
step "kernel tier"
# All features (torch, clap, codec): the set the pipeline builds too, so it compiles once.
cargo test --locked -p featjnd-kernels --all-features "$@" 2>&1 | tee -a "$log"
step "CPU emulation tier of the CUDA kernels (crates/featjnd-emu)"
# kernels/*.cu compiled as C++ and run on the CPU against the CPU path; broken kernels must fail;
# then every kernel entry point of the NVRTC module list must have been launched.
counts=$(mktemp); trap 'rm -f "$log" "$counts"' EXIT
FEATJND_EMU_COUNTS="$counts" cargo test --locked -p featjnd-emu --test tier --test mutants "$@" 2>&1 | tee -a "$log"
FEATJND_EMU_COUNTS="$counts" cargo test --locked -p featjnd-emu --test coverage "$@" 2>&1 | tee -a "$log"
step "pipeline tier"
cargo test --locked -p featjnd-research "$@" 2>&1 | tee -a "$log"
step "Python package"
bash scripts/test-python.sh 2>&1 | tee -a "$log"

skips=$(grep -c '^SKIP' "$log" || true)
step "done: every tier passed; ${skips} test(s) skipped, each with its reason (GPU tests need a GPU):"
grep '^SKIP' "$log" | sort | uniq -c || true
