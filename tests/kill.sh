#!/usr/bin/env bash
# kill.sh: kill -9 of the whole job at any moment loses nothing but the steps since the last
# checkpoint (train/CHECKPOINT.md "What survives a kill"). A 2-rank run of a tiny
# model that checkpoints every step is killed with SIGKILL (mpirun and both ranks at once)
# 20 times: a quarter at a random time after the launch (often during set-up), a quarter at
# a random time after set-up (steps, checkpoint writes), half the moment a checkpoint write
# is in progress (a step_*.tmp directory exists). After every kill,
# `latest` names a committed checkpoint that loads with all its checksums right. Each
# restart resumes (resume: auto) and cleans the interrupted write (a step renamed but not
# yet marked COMMITTED is moved aside, kept: train/CHECKPOINT.md). Finally the run is
# completed and compared with one never interrupted: the same parameters and AdamW state
# (bit for bit), the same per-step losses, and the same data.trace sample ids, which cover
# every sample exactly once per epoch.
# KILL_SEED=N replays a sequence of kill times (printed at the start). STEPS is long enough
# that 20 kills (each at most ~1 s into a run, ~60 steps of this model here) cannot let the
# run finish: 640 did once, when every restart resumed at once and the kills came late.
set -u
unset OMPI_MCA_odls_base_sigkill_timeout  # ranks get the time users' jobs give them (tests/run.sh)
B=${MM_BUILD:-build}
pass=0; fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
seed=${KILL_SEED:-$(( $(date +%s) % 100000 ))}
RANDOM=$seed
echo "kill times from KILL_SEED=$seed"
N=64; G=4; STEPS=1280; PER_EPOCH=$((N / G))
"$B/mmdata" synth --out "$tmp/d" --samples $N --seed 3 >/dev/null ||
    { echo "synth failed"; echo "0 passed, 1 failed"; exit 1; }
cat >"$tmp/c.yaml" <<YAML
run:
  steps: $STEPS
  threads: 1
  log_every: 1000
data:
  train: $tmp/d/train
  global_batch: $G
  micro_batch: 2
  trace: true
model:
  d_model: 16
  n_layers: 1
  n_heads: 2
  d_ff: 32
checkpoint:
  every: 1
  keep_last: 2
YAML
launch() {  # out_dir log: starts the 2-rank job in the background; $! is mpirun
    mpirun "${root[@]}" --oversubscribe -np 2 "$B/train" "$tmp/c.yaml" run.out_dir="$1" >"$2" 2>&1 &
}
run=$tmp/run
mid_write=0; resumed=0; bad_latest=0; finished_early=0
for i in $(seq 1 20); do
    launch "$run" "$tmp/log_$i"; mp=$!
    t0=$SECONDS
    if [ $((i % 4)) -eq 1 ]; then
        # any moment from the launch on: often during set-up
        sleep "0.$(printf "%03d" $((RANDOM % 1000)))"
    else
        # after set-up (rank 0 printed the model line; a sanitizer build is slow to get there)
        until grep -q "^model:" "$tmp/log_$i" 2>/dev/null; do
            kill -0 $mp 2>/dev/null && [ $((SECONDS - t0)) -lt 60 ] || break
            sleep 0.01
        done
        if [ $((i % 2)) -eq 0 ]; then
            # the moment a checkpoint write is in progress
            until compgen -G "$run/ckpt/*.tmp" >/dev/null; do
                kill -0 $mp 2>/dev/null && [ $((SECONDS - t0)) -lt 60 ] || break
            done
        else
            sleep "0.$(printf "%03d" $((RANDOM % 500)))"
        fi
    fi
    # the whole job at once: mpirun and its ranks
    kill -9 $mp $(pgrep -P $mp) 2>/dev/null
    wait $mp 2>/dev/null
    sleep 0.05
    compgen -G "$run/ckpt/*.tmp" >/dev/null && mid_write=$((mid_write + 1))
    grep -q "resumed from" "$tmp/log_$i" && resumed=$((resumed + 1))
    grep -q "nothing to do" "$tmp/log_$i" && finished_early=$((finished_early + 1))
    if [ -e "$run/ckpt/latest" ]; then
        l=$run/ckpt/$(cat "$run/ckpt/latest")
        same=$("$B/tests/test_survive" --same "$l" "$l" 2>&1)
        if [ ! -f "$l/COMMITTED" ] || [ "$same" != same ]; then
            bad_latest=$((bad_latest + 1)); echo "after kill $i: latest $l: $same"
        fi
    fi
done
ok "after every kill, latest names a committed checkpoint that loads ($bad_latest bad)" '[ $bad_latest -eq 0 ]'
ok "some kills hit a checkpoint write ($mid_write of 20)" '[ $mid_write -ge 5 ]'
ok "the restarts resumed ($resumed of 19 said so before the kill)" '[ $resumed -ge 10 ]'
ok "20 kills before the run could finish" '[ $finished_early -eq 0 ]'
s=$(sed -n 's/^step_0*//p' "$run/ckpt/latest" 2>/dev/null)
echo "after 20 kills: latest checkpoint at step ${s:-none}, $mid_write kills during a checkpoint write"

launch "$run" "$tmp/final"; wait $!; rc=$?
ok "final run exits 0 (rc $rc): $(tail -n 2 "$tmp/final")" '[ $rc -eq 0 ]'
# a write killed after its rename but before its COMMITTED marker is moved aside and kept
# (step_N.uncommitted-<time>), never loaded; nothing else may be left
ok "no leftovers of interrupted writes but the steps moved aside ($(ls "$run/ckpt" | grep -c uncommitted) of those)" \
   '[ -z "$(ls "$run/ckpt" | grep -v -E "^(latest|step_[0-9]+|step_[0-9]+\.uncommitted-[0-9]+)$")" ]'
for d in "$run"/ckpt/step_*; do
    case "$d" in *.uncommitted-*) continue ;; esac
    ok "$d committed" '[ -f "$d/COMMITTED" ]'
done
launch "$tmp/ref" "$tmp/ref.log"; wait $!
last=$(printf 'step_%08d' $STEPS)
same=$("$B/tests/test_survive" --same "$run/ckpt/$last" "$tmp/ref/ckpt/$last" 2>&1)
ok "final state equals an uninterrupted run: $same" '[ "$same" = same ]'
losses() { sed -n 's/,"tokens_per_s".*//p' "$1"; }
ok "per-step losses equal an uninterrupted run" \
   'cmp -s <(losses "$run/metrics.jsonl") <(losses "$tmp/ref/metrics.jsonl")'
ok "metrics has each step once" '[ "$(losses "$run/metrics.jsonl" | cut -d, -f1 | sort -u | wc -l)" -eq $STEPS ] && [ "$(losses "$run/metrics.jsonl" | wc -l)" -eq $STEPS ]'
for r in 0 1; do
    f=$(printf 'rank_%05d.txt' $r)
    ok "trace of rank $r equals an uninterrupted run" 'cmp -s "$run/trace/$f" "$tmp/ref/trace/$f"'
done
# every sample id exactly once per epoch (the trace: step micro dp_rank ids...)
bad=$(cat "$run"/trace/rank_*.txt | awk -v pe=$PER_EPOCH -v n=$N '
    { e = int(($1 - 1) / pe); for (i = 4; i <= NF; i++) seen[e, $i]++; if (e > me) me = e }
    END { bad = 0
          for (e = 0; e <= me; e++) for (id = 0; id < n; id++) if (seen[e, id] != 1) bad++
          print bad }')
ok "each epoch saw every sample exactly once ($bad misses or repeats)" '[ "$bad" -eq 0 ]'
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
