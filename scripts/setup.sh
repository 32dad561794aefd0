#!/usr/bin/env bash
# Sets up a Debian 12 machine for Attune and builds it into build/ (Release).
# Installs only the Debian packages that are missing (apt-get update first),
# then configures with CMake + Ninja and builds incrementally.
#
#   scripts/setup.sh [--build-dir DIR] [--test-tools]
#
# --test-tools also installs what only the tests use: Chromium (audit.html
# is looked at headless), scikit-learn and Pillow (oracles and screenshots),
# and clang with its libFuzzer runtime (the fuzz targets, fuzz/).
#
# Why OpenBLAS: Debian's LibTorch calls libblas.so.3, which defaults to the
# reference BLAS; libopenblas0-openmp makes LibTorch's matrix products about
# 14x faster on the same machine (see README, "Figures").
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="$here/build"
test_tools=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-dir) build_dir="$2"; shift 2 ;;
    --test-tools) test_tools=1; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev libgloo-dev libopenblas0-openmp
  libgrpc++-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev
  libssl-dev librocksdb-dev libopenmpi-dev openmpi-bin
  libgtest-dev libgmock-dev python3-numpy python3-torch python3-mpmath libpng-dev zlib1g-dev
  libspdlog-dev libfmt-dev nlohmann-json3-dev libcli11-dev libjs-d3
)
if [[ $test_tools -eq 1 ]]; then
  packages+=(chromium fonts-dejavu-core python3-sklearn python3-scipy python3-pil
             clang libclang-rt-14-dev)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "== installing ${#missing[@]} Debian packages: ${missing[*]}"
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
else
  echo "== all Debian packages present"
fi

jobs="$(nproc)"
echo "== configuring ($build_dir)"
cmake -S "$here" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
echo "== building with $jobs jobs (the first build takes several minutes: LibTorch is heavy)"
cmake --build "$build_dir" -j "$jobs"
