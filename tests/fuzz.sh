#!/usr/bin/env bash
# fuzz.sh: the short fuzzing pass of `make test`: builds the libFuzzer harnesses
# (make fuzz-build: clang, ASan + UBSan, into build-fuzz/) and runs each for FUZZ_SECONDS
# from its seed corpus: FUZZ_RUNS inputs (default 3000) from seed 1, then replays the regression inputs of crashes found and
# fixed before (tests/fuzz/run.sh). `make fuzz` is the longer run (60 s per harness).
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
if ! command -v clang >/dev/null 2>&1; then
    echo "clang not found: the fuzz harnesses need clang (Debian: apt-get install clang)"
    echo "0 passed, 1 failed"; exit 1
fi
log=$(mktemp); trap 'rm -f "$log"' EXIT
if ! make -C "$repo" --no-print-directory -s -j2 fuzz-build >"$log" 2>&1; then
    tail -n 20 "$log"
    echo "0 passed, 1 failed"; exit 1
fi
# a fixed seed and input count: the same commit passes or fails the same way on any machine
FUZZ_RUNS=${FUZZ_RUNS:-3000} bash "$here/fuzz/run.sh" "$repo/build-fuzz" "${FUZZ_SECONDS:-10}"
