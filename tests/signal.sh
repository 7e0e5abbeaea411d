#!/usr/bin/env bash
# signal.sh: preemption (train/survive.h). A stop signal makes every rank finish its
# step, write a checkpoint together and exit 0; resuming from it continues bit for bit:
#   1. SIGTERM to a single-process run (no mpirun);
#   2. SIGUSR1 to mpirun with 2 ranks (Open MPI forwards it to every rank);
#   3. a second signal ends the run at once, without a checkpoint (exit 128 + signal).
#   4-6. launch/slurm.sbatch outside Slurm: SIGUSR1 stops and requeues, a job-wide SIGTERM
#      stops with a checkpoint, a too-short time limit is refused.
# "Bit for bit": the resumed run, stopped a few steps later with run.stop_after, has the same
# parameters, AdamW moments and per-step losses as a run that was never stopped
# (build/tests/test_survive --same compares checkpoints).
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
  steps: 1000000
  threads: 1
  log_every: 1
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
# wait_steps FILE N PID: until FILE has N step lines (or the process is gone / 60 s)
wait_steps() {
    for _ in $(seq 600); do
        local n; n=$(grep -c '"loss"' "$1" 2>/dev/null)
        [ "${n:-0}" -ge "$2" ] && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
# step lines without timing fields
losses() { sed -n 's/,"tokens_per_s".*//p' "$1"; }
# check_resume NAME RUN_DIR EXTRA_OVERRIDE LAUNCH...: the stopped run at step S resumes to
# S+3 exactly like a run never stopped
check_resume() {
    local name=$1 run=$2 extra=$3; shift 3
    local s; s=$(sed -n 's/^step_0*//p' "$run/ckpt/latest")
    [ -n "$s" ] || { ok "$name: no latest" false; return; }
    local stop=$((s + 3))
    "$@" "$tmp/c.yaml" $extra run.out_dir="$run" run.stop_after=$stop >"$tmp/$name.resume" 2>&1
    ok "$name: resume exits 0" '[ $? -eq 0 ]'
    ok "$name: resumed from step $s" 'grep -q "resumed from .*step_0*$s at step $s" "$tmp/$name.resume"'
    "$@" "$tmp/c.yaml" $extra run.out_dir="$tmp/${name}_ref" run.stop_after=$stop >"$tmp/$name.ref" 2>&1
    ok "$name: reference run exits 0" '[ $? -eq 0 ]'
    local dir; dir=$(printf 'step_%08d' $stop)
    local same; same=$("$B/tests/test_survive" --same "$run/ckpt/$dir" "$tmp/${name}_ref/ckpt/$dir" 2>&1)
    ok "$name: state after resume equals an uninterrupted run: $same" '[ "$same" = same ]'
    ok "$name: per-step losses equal an uninterrupted run" \
       'cmp -s <(losses "$run/metrics.jsonl") <(losses "$tmp/${name}_ref/metrics.jsonl")'
    ok "$name: metrics has $stop steps" '[ "$(losses "$run/metrics.jsonl" | wc -l)" -eq $stop ]'
}

# 1. SIGTERM, single process
"$B/train" "$tmp/c.yaml" run.out_dir="$tmp/t" data.micro_batch=4 >"$tmp/t.out" 2>&1 &
pid=$!
wait_steps "$tmp/t/metrics.jsonl" 20 $pid; ok "term: run made progress" '[ $? -eq 0 ]'
kill -TERM $pid; wait $pid; rc=$?
ok "term: exit 0 (got $rc): $(tail -n 2 "$tmp/t.out")" '[ $rc -eq 0 ]'
ok "term: says so" 'grep -q "SIGTERM received: stopped after step [0-9]* with a checkpoint" "$tmp/t.out"'
ok "term: committed checkpoint named by latest" \
   '[ -f "$tmp/t/ckpt/$(cat "$tmp/t/ckpt/latest")/COMMITTED" ]'
check_resume term "$tmp/t" data.micro_batch=4 "$B/train"

# 2. SIGUSR1 to mpirun, 2 ranks
mpi=(timeout 120 mpirun "${root[@]}" --oversubscribe -np 2 "$B/train")
"${mpi[@]}" "$tmp/c.yaml" run.out_dir="$tmp/u" >"$tmp/u.out" 2>&1 &
pid=$!
wait_steps "$tmp/u/metrics.jsonl" 20 $pid; ok "usr1: run made progress" '[ $? -eq 0 ]'
mp=$(pgrep -P $pid mpirun || echo $pid)  # timeout's child
kill -USR1 $mp; wait $pid; rc=$?
ok "usr1: exit 0 (got $rc): $(tail -n 3 "$tmp/u.out")" '[ $rc -eq 0 ]'
ok "usr1: says so once" '[ "$(grep -c "SIGUSR1 received: stopped after step" "$tmp/u.out")" -eq 1 ]'
ok "usr1: committed checkpoint named by latest" \
   '[ -f "$tmp/u/ckpt/$(cat "$tmp/u/ckpt/latest")/COMMITTED" ]'
ok "usr1: both ranks' files" '[ -f "$tmp/u/ckpt/$(cat "$tmp/u/ckpt/latest")/rank_00000.h5" ]'
check_resume usr1 "$tmp/u" "" "${mpi[@]}"

# 3. a second signal: both are made pending while the process is stopped, so the second
# surely arrives before the step ends
"$B/train" "$tmp/c.yaml" run.out_dir="$tmp/s" data.micro_batch=4 >"$tmp/s.out" 2>&1 &
pid=$!
wait_steps "$tmp/s/metrics.jsonl" 5 $pid
kill -STOP $pid; kill -TERM $pid; kill -INT $pid; kill -CONT $pid
wait $pid; rc=$?
ok "second signal: exits at once with 128+signal (got $rc)" '[ $rc -eq 143 ] || [ $rc -eq 130 ]'
ok "second signal: says so" 'grep -q "second stop signal: exiting now" "$tmp/s.out"'
ok "second signal: no checkpoint written" '[ ! -e "$tmp/s/ckpt/latest" ]'
# 4-6. launch/slurm.sbatch outside Slurm (tests/slurm.sh runs it under a real one): fake
# SLURM_* variables, scontrol and squeue replaced by stubs (requeue is recorded; `show job`
# names the script as submitted; squeue answers STUB_LIMIT / STUB_STATE), launcher mpirun.
# The script runs as sbatch runs it: a copy in a spool folder, from another folder.
mkdir -p "$tmp/bin" "$tmp/spool" "$tmp/elsewhere"
here=$(pwd)
{
    echo '#!/bin/sh'
    echo 'case "$1" in'
    echo "requeue) echo \"\$@\" >>'$tmp/requeued' ;;"
    echo "show) printf '   Command=%s\\n   WorkDir=%s\\n' '$here/launch/slurm.sbatch' '$tmp/elsewhere' ;;"
    echo 'esac'
} >"$tmp/bin/scontrol"
{
    echo '#!/bin/sh'
    echo 'case "$*" in'
    echo '*%l*) echo "${STUB_LIMIT:-1-00:00:00}" ;;'
    echo '*%T*) echo "${STUB_STATE:-RUNNING}" ;;'
    echo 'esac'
} >"$tmp/bin/squeue"
chmod +x "$tmp/bin/scontrol" "$tmp/bin/squeue"
cp launch/slurm.sbatch "$tmp/spool/slurm_script"
# sbatch_bg NAME [VAR=VALUE...]: the spooled script in the background, its pid in $pid
sbatch_bg() {
    local name=$1; shift
    (cd "$tmp/elsewhere" && exec env PATH="$tmp/bin:$PATH" SLURM_NTASKS=2 SLURM_JOB_ID=4242 \
        SLURM_SUBMIT_DIR="$tmp/elsewhere" LAUNCHER=mpirun TRAIN= MMTRAIN_ROOT= MMTRAIN_MIN_RUN=0 \
        OMPI_MCA_rmaps_base_oversubscribe=1 "$@" \
        timeout 120 bash "$tmp/spool/slurm_script" "$tmp/c.yaml" run.out_dir="$tmp/$name") \
        >"$tmp/$name.out" 2>&1 &
    pid=$!
}
# descendants of a process
tree() { local c; for c in $(pgrep -P "$1"); do echo "$c"; tree "$c"; done; }
# 4. SIGUSR1 to the batch script (what --signal=B:USR1 and scancel -b -s USR1 send) reaches
# the ranks through mpirun once; they stop with a checkpoint and the script requeues the job
sbatch_bg sb
wait_steps "$tmp/sb/metrics.jsonl" 20 $pid; ok "sbatch usr1: run made progress" '[ $? -eq 0 ]'
sb=$(pgrep -P $pid bash || echo $pid)
kill -USR1 $sb; wait $pid; rc=$?
ok "sbatch usr1: script exits 0 (rc $rc): $(tail -n 3 "$tmp/sb.out")" '[ $rc -eq 0 ]'
ok "sbatch usr1: repository found from the spooled copy" 'grep -q "mpirun .*$here/build/train" "$tmp/sb.out"'
if [ "$(id -u)" -eq 0 ]; then
    ok "sbatch usr1: as root, mpirun gets --allow-run-as-root" 'grep -q "mpirun .*--allow-run-as-root" "$tmp/sb.out"'
fi
ok "sbatch usr1: the ranks stopped with a checkpoint, once" \
   '[ "$(grep -c "SIGUSR1 received: stopped after step" "$tmp/sb.out")" -eq 1 ] && [ -f "$tmp/sb/ckpt/$(cat "$tmp/sb/ckpt/latest")/COMMITTED" ]'
ok "sbatch usr1: requeued" 'grep -q "requeue 4242" "$tmp/requeued"'
# 5. the job ending (scancel, time limit): Slurm sends SIGTERM to every process of the job at
# once (the script, mpirun, each rank); mpirun must not kill the ranks, which stop with a
# checkpoint and exit 0; the script passes nothing on and does not requeue
rm -f "$tmp/requeued"
sbatch_bg st STUB_STATE=CANCELLED
wait_steps "$tmp/st/metrics.jsonl" 20 $pid; ok "sbatch term: run made progress" '[ $? -eq 0 ]'
sb=$(pgrep -P $pid bash || echo $pid)
# shellcheck disable=SC2046  # a list of pids
kill -TERM $sb $(tree $sb); wait $pid; rc=$?
ok "sbatch term: script exits 0 (rc $rc): $(tail -n 3 "$tmp/st.out")" '[ $rc -eq 0 ]'
ok "sbatch term: the ranks stopped with a checkpoint" \
   'grep -q "SIGTERM received: stopped after step" "$tmp/st.out" && [ -f "$tmp/st/ckpt/$(cat "$tmp/st/ckpt/latest")/COMMITTED" ]'
ok "sbatch term: no step lost (metrics end at the checkpoint)" \
   '[ "$(losses "$tmp/st/metrics.jsonl" | wc -l)" -eq "$(sed -n "s/^step_0*//p" "$tmp/st/ckpt/latest")" ]'
ok "sbatch term: not requeued" '[ ! -e "$tmp/requeued" ]'
# 6. a time limit shorter than the stop margin plus MMTRAIN_MIN_TRAIN is refused at start
sbatch_bg short STUB_LIMIT=5:00
wait $pid; rc=$?
ok "sbatch short limit: refused with exit 2 (rc $rc): $(tail -n 1 "$tmp/short.out")" \
   '[ $rc -eq 2 ] && grep -q "time limit (5:00) leaves less than" "$tmp/short.out" && [ ! -e "$tmp/short" ]'
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
