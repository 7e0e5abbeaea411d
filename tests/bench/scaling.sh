#!/usr/bin/env bash
# scaling.sh: the distributed-training part of `make bench` (run.sh calls it). Kernel and
# collective benchmarks cannot show what a user of `mpirun -np 2` gets: whether the bucketed
# allreduce really hides behind backward, and whether two ranks train twice as fast as one.
# So this runs the real trainer (build/train) on a synthetic dataset and reads its
# metrics.jsonl:
#   (b) exposed gradient communication (comm_exposed, a share of step time) on 2 dp ranks,
#       for several bucket sizes (one bucket = nothing to overlap) and for ZeRO-1;
#   (c) dp weak-scaling efficiency E = T2 / (2 T1) from 1 to 2 ranks at 1 thread each, next
#       to the machine's own ceiling C = (Ta + Tb) / (2 T1): two independent 1-rank runs side
#       by side, so that memory bandwidth, shared cache, clock and the loader threads cost
#       what they cost the two ranks. Target: E / C >= 0.90.
# Placement: the MPI ranks are bound one per core (--bind-to core: rank 0 on the first core,
# rank 1 on the second, as --report-bindings shows); the single run and the side-by-side pair
# are pinned with taskset to the same cores, so the three measure the same placement. Each
# rank's loader thread shares its rank's core in all of them.
# Numbers are medians over the timed steps (warmup steps skipped). Like all of `make bench`
# it informs: the exit status is non-zero only when a run crashed.
#
#   bash tests/bench/scaling.sh [BUILD_DIR]
#   env: MM_BENCH_WAIT=0       seconds to wait, before each run, for the machine to become idle
#        MM_SCALING_STEPS=50   timed steps per run (after 5 warmup steps)
#        MM_SCALING_BATCH=16   micro_batch b (single: global b; 2 ranks: global 2b)
set -u
BUILD=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
train="$BUILD/train"
mmdata="$BUILD/mmdata"
warm=5
steps=${MM_SCALING_STEPS:-50}
b=${MM_SCALING_BATCH:-16}

echo
echo "== dp scaling: build/train, bench_small shapes, micro_batch $b, 1 thread per rank," \
     "$steps timed steps after $warm, medians"
for tool in "$train" "$mmdata"; do
    [ -x "$tool" ] || { echo "   $tool not built: dp scaling skipped"; exit 0; }
done
command -v mpirun >/dev/null 2>&1 || { echo "   mpirun not found: dp scaling skipped"; exit 0; }
command -v taskset >/dev/null 2>&1 || { echo "   taskset not found: dp scaling skipped"; exit 0; }
# The first two CPUs this process may use; one rank per core is the whole point.
read -r cpu0 cpu1 < <(taskset -pc $$ | sed 's/.*: //' | tr ',' '\n' |
    awk -F- '{ for (i = $1; i <= ($2 == "" ? $1 : $2); i++) print i }' | head -n 2 | xargs)
if [ -z "${cpu1:-}" ]; then echo "   fewer than 2 CPUs available: dp scaling skipped"; exit 0; fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Every run uses this one copy, so that a rebuild of build/ meanwhile cannot mix binaries.
cp "$train" "$tmp/train" || exit 1
train="$tmp/train"
rc=0
mpi_root=(); [ "$(id -u)" -ne 0 ] || mpi_root=(--allow-run-as-root)
if ! "$mmdata" synth --out "$tmp/data" --samples 2048 --seed 1 >"$tmp/synth.log" 2>&1; then
    echo "   mmdata synth failed:"; sed 's/^/   | /' "$tmp/synth.log"; exit 1
fi
# Explicit single-thread settings so that BLAS and OpenMP agree whichever reads its own first.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
common=(data.train="$tmp/data/train" run.threads=1 run.steps=$((warm + steps))
        run.log_every=100000 checkpoint.every=0 checkpoint.resume=none data.micro_batch="$b")

. "$(dirname "$0")/idle.sh"
# An idle machine before a run says nothing about the seconds of the run itself, which is
# when another job would steal a core. cpu_mark records the machine's busy and total
# jiffies and the CPU time of this shell's finished children (the trainers, once waited
# for); other_load turns two marks into the cores used by everything else meanwhile.
cpu_mark() {
    local s p
    s=$(head -n 1 /proc/stat); p=$(sed 's/.*) //' "/proc/$$/stat")
    awk -v s="$s" -v p="$p" 'BEGIN {
        n = split(s, x); tot = 0
        for (i = 2; i <= n; i++) tot += x[i]
        split(p, q)   # fields after "(comm) ": q[1] = state, so cutime, cstime = q[14], q[15]
        printf "%d %d %d\n", tot - x[5] - x[6], tot, q[14] + q[15]
    }'
}
other_load() {
    awk -v a="$1" -v b="$2" -v ncpu="$(nproc)" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        dt = y[2] - x[2]; o = (y[1] - x[1]) - (y[3] - x[3])
        printf "%.2f", (dt > 0 && o > 0) ? ncpu * o / dt : 0
    }'
}
# stats METRICS: "tokens_per_s step_time comm_exposed exposed_seconds n" as medians over the
# steps after the warmup.
stats() {
    awk -v w="$warm" '
        function f(k,   v) { v = $0; if (!sub(".*\"" k "\":", "", v)) return -1
                             sub(/[,}].*/, "", v); return v + 0 }
        function med(a, n,   i, j, t) {
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--)
                                       a[j + 1] = a[j]; a[j + 1] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
        /"tokens_per_s"/ { if (f("step") <= w) next
            n++; tps[n] = f("tokens_per_s"); st[n] = f("step_time"); ce[n] = f("comm_exposed")
            es[n] = ce[n] * st[n] }
        END { if (n) printf "%.1f %.6f %.6f %.6f %d\n",
                            med(tps, n), med(st, n), med(ce, n), med(es, n), n }' "$1"
}

# Every run leaves "name|label|procs|tokens_per_s step_time exposed exposed_s n|others|note".
rows=()
noisy=0
# finish NAME LABEL PROCS STATUS MARK0 MARK1 LOG: checks one run and records its row.
finish() {
    local name=$1 label=$2 procs=$3 st=$4 m0=$5 m1=$6 log=$7 s o note=""
    s=$(stats "$tmp/$name/metrics.jsonl" 2>/dev/null)
    o=$(other_load "$m0" "$m1")
    if [ "$st" -ne 0 ] || [ -z "$s" ]; then
        echo "   $label: build/train failed (exit $st):"; tail -n 15 "$log" | sed 's/^/   | /'
        rc=1; s=""
    fi
    if awk -v o="$o" 'BEGIN { exit !(o > 0.10) }'; then note="busy"; noisy=1; fi
    rows+=("$name|$label|$procs|$s|$o|$note")
}
get() {  # get NAME FIELD: a field (1..5) of NAME's stats, or "" when it failed
    local r
    for r in "${rows[@]}"; do
        IFS='|' read -r n _ _ s _ _ <<<"$r"
        [ "$n" = "$1" ] && { awk -v i="$2" '{ print $i }' <<<"$s"; return; }
    done
}
warn_busy() {
    local s; s=$(settle)
    [ -n "$s" ] && { echo "   (WARNING: machine busy before $1, $s)"; noisy=1; }
}

# single: 1 rank on the first core, the other core idle.
run_single() {
    warn_busy "$2"
    local m0 m1 st
    m0=$(cpu_mark)
    timeout 300 taskset -c "$cpu0" "$train" "$root/configs/bench_small.yaml" "${common[@]}" \
        run.out_dir="$tmp/$1" data.global_batch="$b" >"$tmp/$1.log" 2>&1
    st=$?
    m1=$(cpu_mark)
    finish "$1" "$2" 1 "$st" "$m0" "$m1" "$tmp/$1.log"
}
run_single single "single, 1 rank (taskset -c $cpu0)"
params=$(sed -n 's/^model: \([0-9]*\) parameters.*/\1/p' "$tmp/single.log")

# pair: two independent 1-rank runs started together, one per core; nothing links them.
warn_busy "the side-by-side pair"
m0=$(cpu_mark)
timeout 300 taskset -c "$cpu0" "$train" "$root/configs/bench_small.yaml" "${common[@]}" \
    run.out_dir="$tmp/pair_a" data.global_batch="$b" >"$tmp/pair_a.log" 2>&1 &
pa=$!
timeout 300 taskset -c "$cpu1" "$train" "$root/configs/bench_small.yaml" "${common[@]}" \
    run.out_dir="$tmp/pair_b" data.global_batch="$b" >"$tmp/pair_b.log" 2>&1 &
pb=$!
wait "$pa"; sa=$?
wait "$pb"; sb=$?
m1=$(cpu_mark)
finish pair_a "pair a, side by side (taskset -c $cpu0)" 1 "$sa" "$m0" "$m1" "$tmp/pair_a.log"
finish pair_b "pair b, side by side (taskset -c $cpu1)" 1 "$sb" "$m0" "$m1" "$tmp/pair_b.log"

# dp2 NAME LABEL OVERRIDES...: 2 data-parallel ranks, one per core.
run_dp2() {
    local name=$1 label=$2 m0 m1 st
    shift 2
    warn_busy "$label"
    m0=$(cpu_mark)
    timeout 300 mpirun "${mpi_root[@]}" --oversubscribe --bind-to core --map-by core \
        --report-bindings -np 2 "$train" "$root/configs/bench_small.yaml" "${common[@]}" \
        run.out_dir="$tmp/$name" data.global_batch=$((2 * b)) "$@" >"$tmp/$name.log" 2>&1
    st=$?
    m1=$(cpu_mark)
    finish "$name" "$label" 2 "$st" "$m0" "$m1" "$tmp/$name.log"
}
# buckets MB: how many buckets gradsync.c makes of this model's gradients (>= 1024 floats each).
buckets() {
    awk -v n="${params:-0}" -v mb="$1" 'BEGIN {
        per = int(mb * 1048576 / 4); if (per < 1024) per = 1024
        printf "%d", (n > 0) ? int((n + per - 1) / per) : 0 }'
}
run_dp2 dp2 "dp2, buckets 4 MiB (default, $(buckets 4))"
run_dp2 dp2_one "dp2, buckets 1024 MiB ($(buckets 1024), no overlap)" parallel.bucket_mb=1024
run_dp2 dp2_1 "dp2, buckets 1 MiB ($(buckets 1))" parallel.bucket_mb=1
run_dp2 dp2_q "dp2, buckets 0.25 MiB ($(buckets 0.25))" parallel.bucket_mb=0.25
run_dp2 dp2_zero "dp2, ZeRO-1 (reduce-scatter)" parallel.zero=1
binding=$(sed -n 's/.*MCW \(rank [0-9]*\) bound to .*\(\[[^]]*\]\).*/\1 \2/p' "$tmp/dp2.log" |
    sort | paste -sd ';' | sed 's/;/, /g')

echo "   model: ${params:-?} parameters ($(awk -v n="${params:-0}" \
     'BEGIN { printf "%.2f", n * 4 / 1048576 }') MiB of fp32 gradients);" \
     "MPI placement: ${binding:-unknown}"
printf '   %-44s %5s %9s %8s %10s %9s %7s\n' run procs tokens/s "step ms" "exposed ms" \
    "exposed%" others
for r in "${rows[@]}"; do
    IFS='|' read -r name label procs s o note <<<"$r"
    if [ -z "$s" ]; then printf '   %-44s %5s   (failed)\n' "$label" "$procs"; continue; fi
    read -r tps st ce es n <<<"$s"
    if [ "$procs" -eq 1 ]; then ems="-"; cep="-"
    else ems=$(awk -v x="$es" 'BEGIN { printf "%.2f", 1000 * x }')
         cep=$(awk -v x="$ce" 'BEGIN { printf "%.1f%%", 100 * x }'); fi
    printf '   %-44s %5s %9.0f %8.2f %10s %9s %7s %s\n' "$label" "$procs" "$tps" \
        "$(awk -v x="$st" 'BEGIN { print 1000 * x }')" "$ems" "$cep" "$o" "$note"
    printf 'BENCH {"bench": "dp_run", "run": "%s", "procs": %s, "tokens_per_s": %s, ' \
        "$name" "$procs" "$tps"
    printf '"step_time": %s, "comm_exposed": %s, "exposed_s": %s, "steps": %s, ' \
        "$st" "$ce" "$es" "$n"
    printf '"other_cores": %s}\n' "$o"
done
echo "   (exposed: time gsync_finish waits for the gradient reduction after backward, skew"
echo "    between the ranks included; ZeRO-1's reduce-scatter starts only after backward and"
echo "    its all-gather after AdamW is not counted. others: cores used by other processes"
echo "    during the run; above 0.10 the run is marked busy)"

t1=$(get single 1); ta=$(get pair_a 1); tb=$(get pair_b 1); t2=$(get dp2 1)
if [ -n "$t1" ] && [ -n "$ta" ] && [ -n "$tb" ] && [ -n "$t2" ]; then
    read -r e c ratio sa sb < <(awk -v t1="$t1" -v ta="$ta" -v tb="$tb" -v t2="$t2" 'BEGIN {
        e = t2 / (2 * t1); c = (ta + tb) / (2 * t1)
        printf "%.4f %.4f %.4f %.4f %.4f\n", e, c, e / c, 1 - ta / t1, 1 - tb / t1 }')
    verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.90) ? "PASS" : "MISS" }')
    awk -v e="$e" -v c="$c" -v r="$ratio" -v sa="$sa" -v sb="$sb" -v v="$verdict" 'BEGIN {
        printf "   weak scaling 1->2 ranks: E = T2/(2 T1) = %.1f%%; ceiling C = (Ta+Tb)/(2 T1)", 100 * e
        printf " = %.1f%% (side by side each slows %.1f%% and %.1f%%)\n", 100 * c, 100 * sa, 100 * sb
        printf "   E/C = %.1f%% (target >= 90%%: %s)\n", 100 * r, v }'
    printf 'BENCH {"bench": "dp_weak_scaling", "T1": %s, "T2": %s, "Ta": %s, "Tb": %s, ' \
        "$t1" "$t2" "$ta" "$tb"
    printf '"efficiency": %s, "ceiling": %s, "ratio": %s, "target": 0.90, "noisy": %d}\n' \
        "$e" "$c" "$ratio" "$noisy"
fi
ce_def=$(get dp2 3); ce_one=$(get dp2_one 3)
if [ -n "$ce_def" ] && [ -n "$ce_one" ]; then
    awk -v a="$ce_def" -v b="$ce_one" -v ea="$(get dp2 4)" -v eb="$(get dp2_one 4)" 'BEGIN {
        printf "   exposed comm, default buckets: %.1f%% of the step (%.2f ms);", 100 * a, 1000 * ea
        printf " one bucket: %.1f%% (%.2f ms)\n", 100 * b, 1000 * eb }'
fi
[ "$noisy" -eq 0 ] || echo "   WARNING: other processes were running: rerun on a quiet machine" \
                           "(MM_BENCH_WAIT=300 waits for one)"
exit $rc
