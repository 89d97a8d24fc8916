#!/usr/bin/env bash
# Installs every Debian 12 package lowbit needs to build, test, train and benchmark.
# Idempotent: when everything is present it only runs dpkg-query and exits (about a second).
# Usage: scripts/setup.sh [--with-bench]   (--with-bench adds PyTorch for bench/)
set -euo pipefail

packages=(
  # build
  cmake ninja-build g++ clang-format
  # llc: the AVX-512 variants' machine code from Halide's LLVM IR (cmake/LowbitKernels.cmake)
  llvm-14
  # Halide 14 (pulls in LLVM 14) and the AOT build's needs
  libhalide14-0-dev
  # libraries the runtime, trainer and tests use
  libopencv-dev libcli11-dev nlohmann-json3-dev libfmt-dev libyaml-cpp-dev zlib1g-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # the default data set: /usr/share/datasets/fashion-mnist
  dataset-fashion-mnist
  # GPU schedules run on the CPU through OpenCL for correctness tests
  pocl-opencl-icd ocl-icd-opencl-dev
)
if [[ "${1:-}" == "--with-bench" ]]; then
  packages+=(python3-torch python3-numpy)
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "installed" ]] || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

echo "setup: installing ${missing[*]}"
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
