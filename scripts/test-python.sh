#!/usr/bin/env bash
# Tests of the Python package (crates/featjnd-py): builds the abi3 wheel with maturin into
# target/wheels, installs it into a venv under .deps/pyenv (made once, reused), runs pytest.
# Torch tests run where torch is importable (Debian's python3-torch through
# --system-site-packages) and print SKIP lines otherwise. Needs only crates.io and PyPI.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

MATURIN=1.16.0
PYTEST=8.3.5
ML_DTYPES=0.5.1
venv="$root/.deps/pyenv"

# Debian's python3 first (its site packages may hold torch), then whatever python3 is on PATH.
if [ ! -x "$venv/bin/python" ]; then
  made=""
  for py in /usr/bin/python3 python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -m venv --system-site-packages "$venv" >/dev/null 2>&1; then
      made="$py"
      break
    fi
    rm -rf "$venv"
  done
  if [ -z "$made" ]; then
    echo "test-python: cannot create a venv (is python3-venv installed?)" >&2
    exit 1
  fi
  echo "test-python: venv $venv from $made"
fi
py="$venv/bin/python"
# numpy pinned per Python version (1.24.2 is also what Debian's torch 1.13 was built with).
case "$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" in
  3.9 | 3.10 | 3.11) numpy=1.24.2 ;;
  3.12) numpy=1.26.4 ;;
  *) numpy=2.2.6 ;;
esac
"$py" -m pip install -q --disable-pip-version-check "maturin==$MATURIN" "pytest==$PYTEST" "numpy==$numpy" "ml_dtypes==$ML_DTYPES"

# The wheel (abi3, CPython >= 3.9), built in the workspace's target dir.
export PYO3_BUILD_EXTENSION_MODULE=1
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! "$venv/bin/maturin" build --release -m crates/featjnd-py/Cargo.toml -i "$py" >"$log" 2>&1; then
  cat "$log"
  echo "test-python: maturin build failed" >&2
  exit 1
fi
wheel="$(sed -n 's/.*Built wheel.* to \(.*\.whl\).*/\1/p' "$log" | tail -n 1)"
if [ -z "$wheel" ] || [ ! -f "$wheel" ]; then
  cat "$log"
  echo "test-python: no wheel found in maturin's output" >&2
  exit 1
fi
echo "test-python: built $wheel ($(du -k "$wheel" | cut -f1) KiB)"
"$py" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"

# From the tests' folder, so `import featjnd` is the installed wheel; no caches in the tree.
cd crates/featjnd-py
PYTHONDONTWRITEBYTECODE=1 "$py" -m pytest -q -p no:cacheprovider tests "$@"
