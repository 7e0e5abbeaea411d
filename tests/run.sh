#!/usr/bin/env bash
# run.sh: runs every test of the suite (compiled tests in build/tests, script tests in
# tests/*.sh), each with a time limit, and adds their "N passed, N failed" lines into the
# one closing line CI reads. A test that crashes or prints no count counts as one failure.
set -u
BUILD=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
export MM_BUILD=$(cd "$BUILD" && pwd)
export MM_TESTS=$here
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# A job whose rank exits non-zero makes mpirun kill the job's ranks, waiting this timeout
# (1 s) twice even when every rank has already ended: 2.3 s per error case instead of 0.3,
# and the suite has dozens of error cases. The tests of signals and of dying ranks
# (kill, signal, slurm, rankfail) unset it: there ranks get the time Open MPI gives users'
# jobs.
export OMPI_MCA_odls_base_sigkill_timeout=${OMPI_MCA_odls_base_sigkill_timeout:-0}
# mpirun binds a job of at most 2 ranks one rank per core, from core 0: two jobs at once
# (tests/lib/bg.sh) would share core 0, and so would a single rank's OpenMP threads. The
# suite runs unbound, as the README's commands do (--bind-to none).
export OMPI_MCA_hwloc_base_binding_policy=${OMPI_MCA_hwloc_base_binding_policy:-none}
# Under ASan (make test ASAN=1): Open MPI allocates once in MPI_Init and never frees; the
# suppressions name its libraries, and slow unwinding keeps its frames attributable.
export LSAN_OPTIONS="suppressions=$here/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export ASAN_OPTIONS="fast_unwind_on_malloc=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
total_p=0; total_f=0
run_one() {  # name, command...
    local name=$1; shift
    local log="$tmp/$name.log"
    local t0=$SECONDS
    timeout 900 "$@" >"$log" 2>&1
    local rc=$?
    local line
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
    local p=0 f=0
    if [ -n "$line" ]; then
        p=$(echo "$line" | awk '{print $1}')
        f=$(echo "$line" | awk '{print $3}')
    fi
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    if [ -z "$line" ] && [ "$rc" -eq 0 ]; then f=1; echo "  ($name printed no count)"; fi
    total_p=$((total_p + p)); total_f=$((total_f + f))
    printf '%-28s %4d passed %3d failed  (%ds)\n' "$name" "$p" "$f" $((SECONDS - t0))
    if [ "$f" -ne 0 ]; then sed 's/^/    | /' "$log" | tail -n 40; fi
}
for t in "$BUILD"/tests/test_* "$BUILD"/tests/test64_*; do
    [ -x "$t" ] || continue
    run_one "$(basename "$t")" "$t"
done
for s in "$here"/*.sh; do
    case "$(basename "$s")" in run.sh) continue;; esac
    run_one "$(basename "$s" .sh)" bash "$s"
done
echo "$total_p passed, $total_f failed"
[ "$total_f" -eq 0 ]
