#!/usr/bin/env bash
# trace.sh: the step timeline (run.trace, train/trace.h). 20 steps of configs/tiny.yaml at
# dp = 2 (small buckets, so that several reduce per step), then each rank's JSON read by
# Python's json module:
#   - the Trace Event Format: "X" events with ts/dur, pid = rank, threads named by "M" events;
#   - every phase there: step, data wait, load batch (loader thread), forward, backward and
#     each block's backward, each bucket's allreduce, optimizer, evaluation, checkpoint;
#   - nesting: on each thread, events are disjoint or contained;
#   - per step, the phases directly inside it sum to within 5% of its duration, and rank 0's
#     step durations are metrics.jsonl's step_time;
#   - tracing off writes no file; a file in the way of trace/ is one error line naming it;
#   - a run killed after a checkpoint leaves a trace that parses.
set -u
B=${MM_BUILD:-build}
pass=0; fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
here=$(cd "$(dirname "$0")" && pwd)

"$B/mmdata" synth --out "$tmp/d" --samples 128 --seed 3 >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
common=("$here/../configs/tiny.yaml" data.train="$tmp/d/train" data.val="$tmp/d/val"
        run.steps=20 run.threads=1 eval.samples=16 eval.batch=16 checkpoint.every=10
        parallel.bucket_mb=0.1)
train() {  # train NAME ARGS...: dp = 2 into $tmp/NAME
    local name=$1; shift
    OMP_NUM_THREADS=1 timeout 300 mpirun "${root[@]}" --oversubscribe -np 2 "$B/train" \
        "${common[@]}" run.out_dir="$tmp/$name" "$@" >"$tmp/$name.log" 2>&1
}

train on run.trace=true; rc=$?
ok "traced run exits 0 (rc $rc): $(tail -n 3 "$tmp/on.log")" '[ $rc -eq 0 ]'
for r in 0 1; do
    f="$tmp/on/trace/rank_0000$r.json"
    out=$(python3 "$here/lib/trace_check.py" "$f" "$r" "$tmp/on/metrics.jsonl" 4 2>&1)
    ok "rank $r: trace checks: $out" '[ "$(echo "$out" | tail -n 1)" = OK ]'
    echo "rank $r: $(echo "$out" | head -n 1)"
done

train off; rc=$?
ok "untraced run exits 0 (rc $rc)" '[ $rc -eq 0 ]'
ok "tracing off writes no timeline" '[ -z "$(ls "$tmp/off/trace" 2>/dev/null)" ]'

mkdir -p "$tmp/blocked" && : >"$tmp/blocked/trace"  # a file where the trace/ folder goes
train blocked run.trace=true; rc=$?
ok "unwritable trace: exit non-zero (rc $rc)" '[ $rc -ne 0 ]'
ok "unwritable trace: one error line naming it: $(grep error "$tmp/blocked.log" | head -n 2)" \
   'grep -q "^error: .*blocked/trace" "$tmp/blocked.log"'

# killed between flushes: the timeline is complete as of the last checkpoint
OMP_NUM_THREADS=1 mpirun "${root[@]}" --oversubscribe -np 2 "$B/train" "${common[@]}" \
    run.out_dir="$tmp/kill" run.trace=true run.steps=100000 checkpoint.every=2 \
    data.val= >"$tmp/kill.log" 2>&1 &
pid=$!
for _ in $(seq 600); do grep -q "checkpoint step 4 " "$tmp/kill.log" 2>/dev/null && break; sleep 0.1; done
kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
ok "killed run: the trace parses and holds the steps up to its checkpoint" \
   'python3 -c "import json, sys; e = json.load(open(sys.argv[1]))[\"traceEvents\"]; sys.exit(not any(x[\"name\"] == \"step\" and x[\"args\"][\"step\"] == 4 for x in e))" "$tmp/kill/trace/rank_00000.json"'

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
