#!/usr/bin/env bash
# tests/fuzz/run.sh BUILD_DIR SECONDS [NAME...]: runs each libFuzzer harness (default: all of
# config shard ckpt manifest image) for SECONDS under ASan + UBSan, starting from its seed
# corpus tests/fuzz/corpus/NAME (copied: new inputs stay in a scratch corpus, the repository's
# stays small), then replays every input of tests/fuzz/regress/NAME (crashes and wrong
# answers found earlier, fixed since). A crash is kept in tests/fuzz/crashes/ for turning
# into a regression input, or, when it happens inside libhdf5 on a file whose checksum was
# forged to match (our readers verify the checksum first, so only a deliberately crafted
# file gets there; HDF5 1.10 is not hardened against those), into tests/fuzz/hdf5-known/ as
# a documented limitation.
# Prints one line per harness and "N passed, N failed" (make fuzz, tests/fuzz.sh).
set -u
BUILD=${1:?usage: run.sh BUILD_DIR SECONDS [NAME...]}
SECONDS_EACH=${2:?usage: run.sh BUILD_DIR SECONDS [NAME...]}
shift 2
names=("$@"); [ ${#names[@]} -gt 0 ] || names=(config shard ckpt manifest image)
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
# the suite's ASAN_OPTIONS slow every allocation down for Open MPI's sake; not needed here
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1
export LSAN_OPTIONS=suppressions=$here/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export HDF5_USE_FILE_LOCKING=FALSE
pass=0; fail=0
for n in "${names[@]}"; do
    bin=$BUILD/fuzz_$n
    if [ ! -x "$bin" ]; then echo "fuzz_$n: not built ($bin)"; fail=$((fail + 1)); continue; fi
    mkdir -p "$work/$n" "$here/crashes"
    # FUZZ_RUNS (tests/fuzz.sh, CI): a fixed number of inputs from a fixed seed, so a commit's
    # pass or failure does not depend on the machine's speed; otherwise SECONDS of exploring
    if [ -n "${FUZZ_RUNS:-}" ]; then budget=(-runs="$FUZZ_RUNS" -seed="${FUZZ_SEED:-1}")
    else budget=(-max_total_time="$SECONDS_EACH"); fi
    "$bin" "${budget[@]}" -timeout=30 -rss_limit_mb=3072 -malloc_limit_mb=3072 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$here/crashes/${n}-" \
        "$work/$n" "$here/corpus/$n" >"$work/$n.log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$n.log")
    if [ $rc -eq 0 ]; then
        pass=$((pass + 1)); echo "fuzz_$n: ${runs:-?} inputs, no crash"
    else
        fail=$((fail + 1)); echo "fuzz_$n: FAILED (exit $rc)"; grep -E "ERROR|SUMMARY|runtime error|Test unit written" "$work/$n.log" | head -n 8
    fi
    regress=("$here/regress/$n"/*)
    if [ -e "${regress[0]}" ]; then
        if "$bin" "${regress[@]}" >"$work/$n.regress.log" 2>&1; then
            pass=$((pass + 1)); echo "fuzz_$n: ${#regress[@]} regression input(s) pass"
        else
            fail=$((fail + 1)); echo "fuzz_$n: a regression input fails"; tail -n 20 "$work/$n.regress.log"
        fi
    fi
done
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
