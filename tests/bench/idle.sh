# idle.sh: sourced by the bench scripts (run.sh, scaling.sh). Another busy process makes
# multi-thread and multi-rank numbers meaningless (OpenMP threads and ranks wait on the
# slowest core), so the benches wait for an idle machine or say that it was busy, rather than
# print numbers that look precise.

# busy: prints "N% CPU in use" when more than 10% of all cores were busy over the last second.
busy() {
    local a c
    a=$(head -n 1 /proc/stat); sleep 1; c=$(head -n 1 /proc/stat)
    awk -v a="$a" -v b="$c" 'BEGIN {
        n = split(a, x); split(b, y); tot = 0
        for (i = 2; i <= n; i++) tot += y[i] - x[i]
        idle = (y[5] - x[5]) + (y[6] - x[6])
        busy = tot > 0 ? (tot - idle) / tot : 0
        if (busy > 0.10) printf "%d%% CPU in use", 100 * busy
    }'
}

# settle: waits up to MM_BENCH_WAIT seconds for an idle machine; prints busy's note if not.
settle() {
    local s deadline=$((SECONDS + ${MM_BENCH_WAIT:-0}))
    s=$(busy)
    while [ -n "$s" ] && [ "$SECONDS" -lt "$deadline" ]; do s=$(busy); done
    echo "$s"
}
