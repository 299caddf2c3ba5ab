#!/usr/bin/env bash
# Installs the Debian packages skypipe needs, only those missing (no time spent when all are
# present). Usage: scripts/install-deps.sh [build|test|all]
#   build: compilers and libraries for `cargo build` (MPI, HDF5, CFITSIO, WCSLIB, libclang for bindgen)
#   test:  build + what the test suite uses (healpy/astropy/h5py for reference checks, sqlite3,
#          a local Slurm for the batch-system tests, headless Chromium and the DejaVu fonts
#          for the timeline picture tests, SWarp and reproject for benches/warp_swarp.sh)
set -euo pipefail

build_pkgs=(libopenmpi-dev openmpi-bin libhdf5-dev libcfitsio-dev wcslib-dev libclang-dev clang pkg-config)
test_pkgs=(python3-healpy python3-astropy python3-h5py python3-pil python3-numpy python3-mpmath sqlite3 slurm-wlm munge procps chromium fonts-dejavu-core swarp python3-reproject)

case "${1:-build}" in
  build) pkgs=("${build_pkgs[@]}") ;;
  test|all) pkgs=("${build_pkgs[@]}" "${test_pkgs[@]}") ;;
  *) echo "usage: $0 [build|test|all]" >&2; exit 64 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: missing packages (${missing[*]}) and no apt-get: install them by hand" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
    echo "error: missing packages (${missing[*]}); run as root or install sudo" >&2; exit 1
  fi
fi
echo "installing Debian packages: ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
