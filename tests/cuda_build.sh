#!/usr/bin/env bash
# cuda_build.sh: keeps the CUDA backend honest on machines without a GPU (this one, CI).
#   1. `make cuda` must compile and link cleanly wherever the toolkit is (nvcc): one check;
#      without nvcc it is skipped with a note.
#   2. The CUDA backend's kernels and cuBLAS calls run on the CPU through the emulation of
#      tests/gpu/cuda_emu.h (`make cuda-emu`) and must match the CPU ops: the counts of
#      tests/gpu/test_ops_cuda and tests/gpu/test_act16_cuda (the ops with bf16 activations),
#      the tests the GPU machine runs for real (tests/gpu/run.sh). Under `make test ASAN=1`
#      they are built and run with ASan + UBSan.
#   3. Races: the same emulated tests again with the emulator's other schedules
#      (CUEMU_ORDER=reverse, serial, serial-reverse: tests/gpu/cuda_emu.cc run_block). A kernel
#      without a race computes the same bits in every order, so each run must print exactly the
#      lines of the first; a missing __syncthreads makes one of them differ or fail.
# Both builds keep their objects (build-cuda/, build-cuda-emu*/), so reruns take seconds; a
# lock serializes concurrent runs over the same tree. Prints "N passed, N failed".
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# a nested make must not inherit the suite's make flags (ASAN=1, the jobserver)
mk() { env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make --no-print-directory -j2 "$@"; }
asan=0
case "${MM_BUILD:-}" in *-asan) asan=1 ;; esac
passed=0; failed=0
mkdir -p build-cuda
log=$(mktemp)
trap 'rm -f "$log" "$log".*' EXIT

if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
    t0=$SECONDS
    # ASAN=0 on the command line: the CUDA build never mixes with ASan (an ASAN=1 from the
    # environment of `make test ASAN=1` would make it refuse)
    if flock build-cuda/.lock bash -c "$(declare -f mk); mk cuda ASAN=0" >"$log" 2>&1; then
        echo "make cuda: ok ($((SECONDS - t0))s): build-cuda/train, mmdata, tests/gpu/*"
        passed=$((passed + 1))
    else
        echo "make cuda: FAILED; last lines:"
        tail -n 30 "$log" | sed 's/^/    | /'
        failed=$((failed + 1))
    fi
else
    echo "make cuda: skipped: nvcc not found (no CUDA toolkit on this machine)"
fi

emu=build-cuda-emu
flags=()
if [ "$asan" = 1 ]; then emu=build-cuda-emu-asan; flags=(ASAN=1); fi
mkdir -p "$emu"
t0=$SECONDS
if flock "$emu/.lock" bash -c "$(declare -f mk); mk cuda-emu ${flags[*]:-}" >"$log" 2>&1; then
    # The emulator runs a program on one core, so the four schedules of a program run two at
    # a time, each on one thread (on 2 cores they took 105 s one after another).
    for prog in test_ops_cuda test_act16_cuda; do
        t0=$SECONDS
        for pair in "forward reverse" "serial serial-reverse"; do
            for order in $pair; do
                OMP_NUM_THREADS=1 CUEMU_ORDER=$order "$emu/tests/gpu/$prog" >"$log.$order" 2>&1 &
            done
            wait
        done
        line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log.forward" | tail -n 1)
        if [ -z "$line" ]; then
            echo "emulated $prog crashed; last lines:"
            tail -n 30 "$log.forward" | sed 's/^/    | /'
            failed=$((failed + 1))
            continue
        fi
        p=$(echo "$line" | awk '{print $1}'); f=$(echo "$line" | awk '{print $3}')
        echo "emulated $prog ($emu, 4 schedules in $((SECONDS - t0))s): $line"
        passed=$((passed + p)); failed=$((failed + f))
        [ "$f" -eq 0 ] || grep -E 'FAIL|cuda_emu:' "$log.forward" | head -n 40 | sed 's/^/    | /'
        for order in reverse serial serial-reverse; do
            if cmp -s "$log.forward" "$log.$order"; then
                echo "emulated $prog, CUEMU_ORDER=$order: the same lines"
                passed=$((passed + 1))
            else
                echo "FAIL: emulated $prog, CUEMU_ORDER=$order: other lines than in index order (a race between GPU threads); the first that differ:"
                diff "$log.forward" "$log.$order" | grep '^[<>]' | head -n 10 | sed 's/^/    | /'
                failed=$((failed + 1))
            fi
        done
    done
else
    echo "make cuda-emu: FAILED; last lines:"
    tail -n 30 "$log" | sed 's/^/    | /'
    failed=$((failed + 1))
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
