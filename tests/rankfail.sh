#!/usr/bin/env bash
# rankfail.sh: one rank of a 2-rank job fails in the middle of a step; the job must
# end non-zero within the configured time with a message naming the rank, never hang:
#   - stall: rank 1 sleeps forever (MM_TEST_FAIL=stall:1:STEP, train/survive.h): rank 0's
#     collective times out after run.collective_timeout and comm.c names rank 1 as the one
#     that did not arrive, then ends the job (MPI_Abort);
#   - exit: rank 1 exits without MPI_Finalize: mpirun ends the job and names the rank (or,
#     under a launcher that does not, the timeout does).
# A generous outer `timeout` turns a hang into a failure instead of a stuck suite.
set -u
unset OMPI_MCA_odls_base_sigkill_timeout  # ranks get the time users' jobs give them (tests/run.sh)
B=${MM_BUILD:-build}
pass=0; fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
"$B/mmdata" synth --out "$tmp/d" --samples 64 --seed 3 >/dev/null || { echo "synth failed"; echo "0 passed, 1 failed"; exit 1; }
cat >"$tmp/c.yaml" <<YAML
run:
  steps: 50
  threads: 1
  collective_timeout: 3
data:
  train: $tmp/d/train
  global_batch: 4
  micro_batch: 2
model:
  d_model: 16
  n_layers: 1
  n_heads: 2
  d_ff: 32
checkpoint:
  every: 0
YAML
T=3  # run.collective_timeout above
# the job's own start-up (about 1 s) and the 2 s the diagnosis waits for answers come on top
LIMIT=$((T + 12))
for mode in stall exit; do
    t0=$(date +%s.%N)
    MM_TEST_FAIL=$mode:1:4 timeout 120 mpirun "${root[@]}" --oversubscribe -np 2 "$B/train" \
        "$tmp/c.yaml" run.out_dir="$tmp/$mode" >"$tmp/$mode.log" 2>&1
    rc=$?
    took=$(echo "$(date +%s.%N) - $t0" | bc)
    [ $mode = stall ] && took_stall=$took
    ok "$mode: exits non-zero (rc $rc)" '[ $rc -ne 0 ] && [ $rc -ne 124 ]'
    ok "$mode: ends within $LIMIT s (took $took s)" '[ "$(echo "$took < $LIMIT" | bc)" -eq 1 ]'
    ok "$mode: no step after the failure" '! grep -q "\"step\":5," "$tmp/$mode/metrics.jsonl" 2>/dev/null'
done
ok "stall: names rank 1 as missing: $(grep -m1 error: "$tmp/stall.log")" \
   'grep -Eq "^error: rank 0: .*did not complete within the collective timeout \(3 s.*rank 1 did not arrive" "$tmp/stall.log"'
ok "stall: waited the timeout first ($took_stall s)" '[ "$(echo "$took_stall >= $T" | bc)" -eq 1 ]'
ok "exit: names rank 1: $(grep -m3 -E "rank 1|,1\]" "$tmp/exit.log" | tr -s ' \n' ' ')" \
   'grep -Eq "Process name: \[\[[0-9]+,[0-9]+\],1\]|process rank 1 |rank 1 did not arrive" "$tmp/exit.log"'
# the collective_timeout key itself is checked like every key
timeout 60 "$B/train" "$tmp/c.yaml" run.collective_timeout=-1 >"$tmp/bad.log" 2>&1
ok "a negative collective_timeout is a config error" 'grep -q "^error: .*run.collective_timeout" "$tmp/bad.log"'
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
