#!/usr/bin/env bash
# deps.sh: installs the Debian packages mmtrain builds against when any is missing (make deps,
# and make demo / CI through it). Elsewhere it prints what to install and stops.
# clang + libclang-rt-dev: the libFuzzer harnesses of make test (tests/fuzz.sh).
# MM_DEPS_EXTRA adds packages (e.g. python3-torch for the PyTorch column of make bench).
set -euo pipefail
usage() {
    echo "usage: launch/deps.sh"
    echo "  Installs the Debian packages mmtrain builds against that are missing (apt-get,"
    echo "  sudo when not root); elsewhere prints what to install. MM_DEPS_EXTRA: more packages."
}
for a in "$@"; do  # --help anywhere wins over every other error
    case "$a" in -h | --help) usage; exit 0 ;; esac
done
[ $# -eq 0 ] || { echo "error: deps.sh: takes no arguments, got '$1' (see --help)" >&2; exit 2; }
pkgs=(build-essential pkg-config openmpi-bin libopenmpi-dev libhdf5-dev libyaml-dev
      libopenblas-openmp-dev libfftw3-dev zlib1g-dev libpng-dev libsndfile1-dev libturbojpeg0-dev
      libsoxr-dev sox clang libclang-rt-dev ${MM_DEPS_EXTRA:-})
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: all present"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: missing ${missing[*]}; not a Debian system: install Open MPI, HDF5 (serial,"
    echo "      thread-safe), libyaml, OpenBLAS (OpenMP build), FFTW3 (single precision) and zlib,"
    echo "      each with its development headers, and pkg-config."
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "deps: installing ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
