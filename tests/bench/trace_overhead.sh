#!/usr/bin/env bash
# trace_overhead.sh: what the step timeline (run.trace) costs. Trains configs/tiny.yaml on
# the synthetic set, alternating runs without and with tracing (REPS of each, so that a busy
# machine hurts both alike), and reports the ratio on/off of the median step time
# (metrics.jsonl's step_time: every phase, the device marks and their read-back) and of the
# whole job's wall time (which adds the flushes at checkpoints). Target: < 1.02. Informs only:
# exits non-zero only when a run crashed.
#
#   bash tests/bench/trace_overhead.sh [BUILD_DIR]
#   env: MM_TRACE_REPS=3  MM_TRACE_STEPS=60  MM_TRACE_NP=1 (ranks)
set -u
BUILD=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
reps=${MM_TRACE_REPS:-3}
steps=${MM_TRACE_STEPS:-60}
np=${MM_TRACE_NP:-1}
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$BUILD/mmdata" synth --out "$tmp/d" --samples 256 --seed 3 >/dev/null || { echo "trace bench: synth failed"; exit 1; }
echo "== step timeline overhead: configs/tiny.yaml, $steps steps, $np rank(s), $reps runs each, alternating"
for i in $(seq "$reps"); do
    for mode in off on; do
        start=$(date +%s.%N)
        OMP_NUM_THREADS=1 timeout 600 mpirun "${root[@]}" --oversubscribe -np "$np" "$BUILD/train" \
            "$here/../../configs/tiny.yaml" data.train="$tmp/d/train" data.val= run.threads=1 \
            run.steps="$steps" checkpoint.every=20 run.trace=$([ $mode = on ] && echo true || echo false) \
            run.out_dir="$tmp/$mode$i" >"$tmp/$mode$i.log" 2>&1 || { echo "trace bench: run $mode $i failed"; tail -n 5 "$tmp/$mode$i.log"; exit 1; }
        echo "$start $(date +%s.%N)" >"$tmp/$mode$i.wall"
    done
done
python3 - "$tmp" "$reps" <<'PY'
import json, statistics, sys
tmp, reps = sys.argv[1], int(sys.argv[2])
def med_step(d):  # the median step time of a run, its first step (warm-up) left out
    st = [json.loads(l)["step_time"] for l in open(d + "/metrics.jsonl") if '"step_time"' in l]
    return statistics.median(st[1:])
r = {}
for mode in ("off", "on"):
    steps = [med_step("%s/%s%d" % (tmp, mode, i)) for i in range(1, reps + 1)]
    walls = [(lambda a, b: b - a)(*map(float, open("%s/%s%d.wall" % (tmp, mode, i)).read().split()))
             for i in range(1, reps + 1)]
    r[mode] = (statistics.median(steps), statistics.median(walls))
    print("   tracing %-3s: median step %.2f ms (runs: %s), job wall %.2f s" % (mode, 1e3 * r[mode][0],
          ", ".join("%.2f" % (1e3 * s) for s in steps), r[mode][1]))
ratio, wratio = r["on"][0] / r["off"][0], r["on"][1] / r["off"][1]
print("   on/off: step time %.4f, job wall %.4f (target < 1.02: %s)" %
      (ratio, wratio, "PASS" if ratio < 1.02 else "MISS"))
PY
