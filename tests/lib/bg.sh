# bg.sh: sourced (not run) by the script tests that start one-rank runs side by side. A
# one-rank run here is one core's work (OMP_NUM_THREADS=1; the emulated GPU runs on its calling
# thread) and the machine has two: cuda_layouts.sh and recompute.sh ran one after another for
# minutes.
# Their mpirun needs --bind-to none, or each job's rank 0 is bound to core 0 and two jobs take
# as long as one after the other. Needs $tmp and the script's ok().

# bg FN NAME ARGS...: FN NAME ARGS... in the background; FN writes $tmp/NAME.log and returns
# the run's status
bg_jobs=()
bg() {
    local name=$2
    "$@" &
    bg_jobs+=("$name:$!")
}

# bg_wait: waits for every run bg started; "NAME exits 0" for each, as the scripts' own check
bg_wait() {
    local j rc
    for j in "${bg_jobs[@]}"; do
        wait "${j#*:}"; rc=$?
        ok "${j%%:*} exits 0 (rc $rc): $(tail -n 2 "$tmp/${j%%:*}.log")" '[ $rc -eq 0 ]'
    done
    bg_jobs=()
}
