#!/usr/bin/env bash
# Set up (idempotent) and run the main job. For now: the ops demo on a synthetic feature
# (writes out/demo/: x.npy, jnd.npy, perturbed_*.npy, demo.json). Extra args go to `featjnd`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then set -- ops demo --out out/demo; fi
cargo run --locked --release --bin featjnd -- "$@"
