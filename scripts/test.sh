#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. GPU tests print SKIP where no GPU exists.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --locked "$@"
