#!/usr/bin/env bash
# dit_tp_mpi.sh: tests/test_dit (the diffusion model's tensor parallelism against the serial
# model, plus its local checks on rank 0) under mpirun at world = tp = 1, 2 and 4, one OpenMP
# thread per rank so 4 ranks fit a 2-core machine. Adds the per-run counts into one closing
# "N passed, N failed"; a run that crashes, hangs or prints no count is one failure.
set -u
B=${MM_BUILD:-build}
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
pass=0; fail=0
for n in 1 2 4; do
    out=$(OMP_NUM_THREADS=1 timeout 300 mpirun "${root[@]}" --oversubscribe -np "$n" \
          "$B/tests/test_dit" 2>&1); rc=$?
    line=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
    p=0; f=0
    if [ -n "$line" ]; then p=$(echo "$line" | awk '{print $1}'); f=$(echo "$line" | awk '{print $3}'); fi
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    if [ -z "$line" ] && [ "$f" -eq 0 ]; then f=1; fi
    echo "np $n: $p passed, $f failed (exit $rc)"
    if [ "$f" -ne 0 ]; then echo "$out" | tail -n 40 | sed 's/^/    | /'; fi
    pass=$((pass + p)); fail=$((fail + f))
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
