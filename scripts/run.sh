#!/usr/bin/env bash
# Set up (idempotent) and run the main job: `featjnd run`, the whole FeatJND study on the bundled
# tasks (committed task models and estimators in models/), writing out/report/ (report.md,
# summary.json, PNG curves and attribution panels). Extra args replace the default command, e.g.
# `scripts/run.sh run --quick --out out/quick` or `scripts/run.sh ops demo --out out/demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then set -- run --out out/report; fi
cargo run --locked --release --bin featjnd -- "$@"
