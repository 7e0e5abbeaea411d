#!/usr/bin/env bash
# bundle.sh: builds the whole CUDA build (train, mmdata, tests/gpu/*) HERE, for a bare GPU
# machine that has the CUDA toolkit, cuBLAS and NCCL but none of our other libraries (HDF5,
# libyaml, FFTW, OpenBLAS, libsndfile, libpng, turbojpeg, soxr) and no MPI, and packs it with
# those libraries into ONE portable file, gpu-carry.tar.xz at the repository root (< 60 MB;
# xz shrinks OpenBLAS about 9x). tests/gpu/run.sh unpacks it when it is there and skips the
# build. Without MPI (HAVE_MPI=0, CC=cc): the GPU runs are single-process (comm's identity
# world). Code for a generic x86-64-v2 CPU, since the GPU machine's CPU is not this one.
#
#   bash tests/gpu/bundle.sh        -> build-cuda-bundle/ and gpu-carry.tar.xz
#
# What goes into build-cuda-bundle/lib: every shared library ldd lists for the programs except
# the C runtime (libc, libm, libpthread, libdl, librt, ld-linux, libstdc++, libgcc_s) and
# CUDA's own (cudart, cuBLAS, NCCL: the GPU machine's toolkit provides the ones its driver
# wants). run.sh sets LD_LIBRARY_PATH to it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
B=build-cuda-bundle
JOBS=${JOBS:-2}
echo "bundle: building $B (make CUDA=1 HAVE_MPI=0 CC=cc, -O2 -march=x86-64-v2)"
make --no-print-directory -j"$JOBS" BUILD=$B CUDA=1 HAVE_MPI=0 CC=cc \
    OPT="-O2 -march=x86-64-v2" cuda-all
progs=("$B/train" "$B/mmdata")
for p in "$B"/tests/gpu/*; do [ -f "$p" ] && [ -x "$p" ] && progs+=("$p"); done
rm -rf "$B/lib"
mkdir -p "$B/lib"
skip='^(linux-vdso|libc\.|libm\.|libpthread\.|libdl\.|librt\.|ld-linux|libstdc\+\+\.|libgcc_s\.|libcudart|libcublas|libcublasLt|libnccl)'
for p in "${progs[@]}"; do
    if ldd "$p" | grep -q 'not found'; then
        echo "bundle: $p has unresolved libraries here:"; ldd "$p" | grep 'not found'; exit 1
    fi
    ldd "$p" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
        if [[ "$name" =~ $skip ]]; then continue; fi
        [ -f "$B/lib/$name" ] || cp -L "$path" "$B/lib/$name"
    done
done
echo "bundle: $(ls "$B/lib" | wc -l) libraries: $(ls "$B/lib" | tr '\n' ' ')"
tar cJf gpu-carry.tar.xz --exclude="$B/obj" "$B"
size=$(stat -c %s gpu-carry.tar.xz)
echo "bundle: gpu-carry.tar.xz $((size / 1024 / 1024)) MB (programs: ${progs[*]#$B/})"
if [ "$size" -gt $((60 * 1024 * 1024)) ]; then echo "bundle: over 60 MB"; exit 1; fi
