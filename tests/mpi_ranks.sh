#!/usr/bin/env bash
# mpi_ranks.sh: the test binaries that check themselves across ranks, under mpirun at 1, 2
# and 4 ranks, one OpenMP thread per rank (4 ranks oversubscribe a 2-core machine: ranks must
# not depend on having a core each):
#   test_comm  every collective and group layout (tp in {1, 2, 4}) against exact values
#   test_tp    the transformer at tp = world against the serial model
#   test_dit   the diffusion model at tp = world against the serial model
#   test_eval  evaluation's gather at dp = world: every sample once, in order
#   test_gradsync  ZeRO-1 against the plain dp path at dp = world, bitwise
# Each binary already sums its counts over its ranks; this adds the runs into one closing
# "N passed, N failed". A run that crashes, hangs or prints no count is one failure.
set -u
B=${MM_BUILD:-build}
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
pass=0; fail=0
for t in test_comm test_tp test_dit test_eval test_gradsync; do
    for n in 1 2 4; do
        out=$(OMP_NUM_THREADS=1 timeout 300 mpirun "${root[@]}" --oversubscribe -np "$n" \
              "$B/tests/$t" 2>&1); rc=$?
        line=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
        p=0; f=0
        if [ -n "$line" ]; then p=$(echo "$line" | awk '{print $1}'); f=$(echo "$line" | awk '{print $3}'); fi
        if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
        if [ -z "$line" ] && [ "$f" -eq 0 ]; then f=1; fi
        echo "$t np $n: $p passed, $f failed (exit $rc)"
        if [ "$f" -ne 0 ]; then echo "$out" | tail -n 40 | sed 's/^/    | /'; fi
        pass=$((pass + p)); fail=$((fail + f))
    done
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
