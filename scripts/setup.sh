#!/usr/bin/env bash
# Idempotent set-up for a fresh machine of this project's kind (Debian, x86-64, no GPU needed).
# Installs: libclang-dev (bindgen), the Debian data packages, and into .deps/ (git-ignored):
# the lean libtorch 2.11.0 (tch 0.24), the CUDA runtime/cupti it needs to load, and NVRTC 13.0.x
# (kernels compile to PTX without a GPU). Re-running is cheap: each step checks before it acts.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
deps="$root/.deps"
stamp="$deps/.installed-v1"

need_apt=()
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need_apt+=(dataset-fashion-mnist)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -f "$stamp" ]; then
  echo "setup: pip install lean libtorch 2.11.0 + CUDA 13.0 runtime/NVRTC into .deps (~600 MB, once)"
  rm -rf "$deps"; mkdir -p "$deps"
  python3 -m pip install -q --no-deps --disable-pip-version-check --target "$deps" \
    torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 nvidia-cuda-nvrtc==13.0.88
  # libtorch_cpu.so needs libcudart/libcupti at load time: expose them next to libtorch.
  for lib in "$deps"/nvidia/cu13/lib/*.so*; do
    ln -sf "$lib" "$deps/torch/lib/$(basename "$lib")"
  done
  touch "$stamp"
fi
echo "setup: ok (LIBTORCH=$deps/torch)"
