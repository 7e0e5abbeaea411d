#!/usr/bin/env bash
# comm_mpi.sh: test_comm under mpirun with 1, 2 and 4 ranks (4 oversubscribes a small
# machine: that is the point, ranks must not depend on having a core each), so that every
# layout tp in {1, 2, 4} and every group shape is checked. Each run's counts are already
# summed over its ranks by test_comm; this adds the runs into one closing line.
set -u
B=${MM_BUILD:-build}
bin="$B/tests/test_comm"
pass=0; fail=0
if ! command -v mpirun >/dev/null 2>&1; then
    echo "comm_mpi: mpirun not found: skipped (the single-process run of test_comm still ran)"
    echo "0 passed, 0 failed"
    exit 0
fi
[ -x "$bin" ] || { echo "comm_mpi: $bin not built"; echo "0 passed, 1 failed"; exit 1; }
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for np in 1 2 4; do
    timeout 300 mpirun "${root[@]}" --oversubscribe -np "$np" "$bin" >"$tmp/out" 2>&1
    rc=$?
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$tmp/out" | tail -n 1)
    p=0; f=0
    if [ -n "$line" ]; then p=$(awk '{print $1}' <<<"$line"); f=$(awk '{print $3}' <<<"$line"); fi
    # a crash, a hang (timeout) or a missing count is one failure
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    if [ -z "$line" ] && [ "$f" -eq 0 ]; then f=1; fi
    echo "np=$np: $p passed, $f failed (exit $rc)"
    if [ "$f" -ne 0 ]; then tail -n 30 "$tmp/out" | sed 's/^/    | /'; fi
    pass=$((pass + p)); fail=$((fail + f))
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
