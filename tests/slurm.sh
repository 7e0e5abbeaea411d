#!/usr/bin/env bash
# slurm.sh: launch/slurm.sbatch under a real one-node Slurm (slurmctld, slurmd and munged
# from Debian, started here by hand in a temporary folder with a minimal slurm.conf: no
# systemd, nothing of the machine's own Slurm touched; ports 16917/16918). Checks:
#   1. a plain scancel: every rank gets Slurm's SIGTERM, stops with a checkpoint, exits 0;
#      metrics.jsonl ends at the checkpoint (no step lost) and a resubmit continues from it;
#   2. scancel -b -s USR1: checkpoint, exit 0, the job requeues itself and resumes;
#   3. a time limit shorter than the stop margin is refused at start;
#   4. the time limit's --signal=B:USR1@N: checkpoint and requeue before the limit;
#   5. a normal user's job (nobody) as well as root's; every job is submitted from another
#      folder without MMTRAIN_ROOT (the repository found from the submitted path).
# Jobs run as the user running this (root in CI). Missing packages are installed with apt-get
# when root and MM_SLURM_INSTALL is not 0; where Slurm cannot be installed or started it
# prints "slurm: skipped: <reason>" and passes nothing, fails nothing.
set -u
unset OMPI_MCA_odls_base_sigkill_timeout  # ranks get the time users' jobs give them (tests/run.sh)
B=${MM_BUILD:-build}
B=$(cd "$B" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
pass=0; fail=0
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
skip() { echo "slurm: skipped: $*"; echo "0 passed, 0 failed"; exit 0; }
need() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null &&
         command -v sbatch >/dev/null; }
export PATH=$PATH:/usr/sbin:/sbin
if ! need; then
    if [ "$(id -u)" -eq 0 ] && [ "${MM_SLURM_INSTALL:-1}" != 0 ] && command -v apt-get >/dev/null; then
        echo "slurm: installing slurmctld slurmd slurm-client munge with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        timeout 300 apt-get update >/dev/null 2>&1
        timeout 600 apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1
    fi
    need || skip "slurmctld, slurmd, munged or sbatch missing and not installable here"
fi
[ -x "$B/train" ] && [ -x "$B/mmdata" ] || skip "$B/train or $B/mmdata not built"
command -v mpirun >/dev/null || skip "no mpirun: the trainer is not an MPI build"

tmp=$(mktemp -d /tmp/mm_slurm.XXXXXX); chmod 755 "$tmp"
pids=()
cleanup() {
    local p
    if [ -n "${SLURM_CONF:-}" ]; then timeout 10 scancel --full -u "$(id -un)" >/dev/null 2>&1; fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    [ ! -s "$tmp/munge/pid" ] || kill "$(cat "$tmp/munge/pid")" 2>/dev/null
    sleep 1
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    [ ! -s "$tmp/munge/pid" ] || kill -9 "$(cat "$tmp/munge/pid")" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# munged: a fresh key and socket here (as root it needs --force)
mkdir -p "$tmp/munge" "$tmp/state" "$tmp/spool" "$tmp/log"; chmod 755 "$tmp/munge"  # the socket: jobs of other users authenticate too
dd if=/dev/urandom of="$tmp/munge/key" bs=1024 count=1 2>/dev/null; chmod 400 "$tmp/munge/key"
timeout 20 munged --force --key-file="$tmp/munge/key" --socket="$tmp/munge/sock" \
    --pid-file="$tmp/munge/pid" --log-file="$tmp/munge/log" --seed-file="$tmp/munge/seed" \
    >"$tmp/log/munged.out" 2>&1 || skip "munged does not start: $(tail -n 1 "$tmp/log/munged.out")"
host=$(hostname -s)
me=$(id -un)
cat >"$tmp/slurm.conf" <<CONF
ClusterName=mmtest
SlurmctldHost=$host
SlurmUser=$me
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$tmp/munge/sock
CredType=cred/munge
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/ctld.pid
SlurmdPidFile=$tmp/d.pid
SlurmctldPort=16917
SlurmdPort=16918
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=20
InactiveLimit=0
MinJobAge=600
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
PlugStackConfig=$tmp/plugstack.conf
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
: >"$tmp/plugstack.conf"
export SLURM_CONF=$tmp/slurm.conf
[ "$(id -u)" -eq 0 ] || skip "slurmd must run as root (run this test as root)"
slurmctld -D -i -f "$SLURM_CONF" >"$tmp/log/ctld.out" 2>&1 & pids+=($!)
slurmd -D -f "$SLURM_CONF" >"$tmp/log/d.out" 2>&1 & pids+=($!)
up=0
for _ in $(seq 60); do
    if timeout 5 sinfo -h -o %t 2>/dev/null | grep -qx idle; then up=1; break; fi
    sleep 0.5
done
[ "$up" = 1 ] || skip "slurmctld/slurmd did not come up: $(tail -n 2 "$tmp/log/slurmctld.log" "$tmp/log/slurmd.log" 2>/dev/null | tr '\n' ' ')"
echo "slurm: one-node Slurm $(sinfo -V 2>/dev/null) up on $host"

"$B/mmdata" synth --out "$tmp/d" --samples 32 --seed 3 >/dev/null || { echo "FAIL: synth"; echo "0 passed, 1 failed"; exit 1; }
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
mkdir -p "$tmp/elsewhere"
# submit NAME [sbatch options...]: from $tmp/elsewhere, the repository's script by its path
submit() {
    local name=$1; shift
    (cd "$tmp/elsewhere" && env -u MMTRAIN_ROOT MMTRAIN_MIN_RUN=0 timeout 20 sbatch --parsable \
        -o "$tmp/$name.out" "$@" "$here/launch/slurm.sbatch" "$tmp/c.yaml" run.out_dir="$tmp/$name")
}
state() { timeout 10 squeue -h -j "$1" -o %T 2>/dev/null; }
steps() { grep -c '"loss"' "$1" 2>/dev/null || echo 0; }
ckpt_step() { sed -n 's/^step_0*//p' "$1/ckpt/latest" 2>/dev/null; }
# wait_for SECONDS CONDITION
wait_for() {
    local end=$((SECONDS + $1))
    while [ $SECONDS -lt $end ]; do eval "$2" && return 0; sleep 0.5; done
    return 1
}

# 1. plain scancel: SIGTERM to every process of the job, SIGKILL KillWait (20 s) later
j=$(submit c -n2 -t 60)
ok "scancel: job submitted from another folder ($j)" '[ -n "$j" ]'
wait_for 40 '[ "$(steps "$tmp/c/metrics.jsonl")" -ge 20 ]'; r=$?
ok "scancel: run made progress: $(tail -n 2 "$tmp/c.out" 2>/dev/null)" '[ $r -eq 0 ]'
ok "scancel: launched with srun --mpi=pmix" 'grep -q "mmtrain: srun --mpi=pmix" "$tmp/c.out"'
timeout 10 scancel "$j"
wait_for 40 '[ -z "$(state "$j" | grep -E "RUNNING|COMPLETING")" ]'
ok "scancel: ranks stopped with a checkpoint: $(grep -v '^step' "$tmp/c.out" | tail -n 3)" \
   'grep -q "SIGTERM received: stopped after step" "$tmp/c.out" && [ -f "$tmp/c/ckpt/$(cat "$tmp/c/ckpt/latest")/COMMITTED" ]'
s=$(ckpt_step "$tmp/c")
ok "scancel: no step lost (metrics.jsonl ends at checkpoint step ${s:-?})" '[ -n "$s" ] && [ "$(steps "$tmp/c/metrics.jsonl")" -eq "$s" ]'
ok "scancel: not requeued" '! grep -q "requeueing job" "$tmp/c.out"'
# resume: the same job again continues from that step, metrics contiguous
j2=$(submit c -n2 -t 60)
wait_for 40 '[ "$(steps "$tmp/c/metrics.jsonl")" -ge $((s + 10)) ]'
timeout 10 scancel "$j2"
wait_for 40 '[ -z "$(state "$j2" | grep -E "RUNNING|COMPLETING")" ]'
ok "scancel: resubmitted job resumed from step $s" 'grep -q "resumed from .*step_0*$s at step $s" "$tmp/c.out"'
ok "scancel: metrics.jsonl contiguous 1..N after resume" \
   '[ "$(sed -n "s/^{\"step\":\([0-9]*\).*/\1/p" "$tmp/c/metrics.jsonl" | awk "\$1 != NR { bad = 1 } END { print bad + 0 }")" = 0 ]'

# 2. scancel -b -s USR1: checkpoint, exit 0, requeue, resume
j=$(submit u -n2 -t 60)
wait_for 40 '[ "$(steps "$tmp/u/metrics.jsonl")" -ge 20 ]'; r=$?
ok "usr1: run made progress" '[ $r -eq 0 ]'
# sent again while the ranks have not reported it: a scancel that a busy controller answers
# after the timeout may never reach the job (once in a CI run, the job then ran on unsignalled).
# slurm.sbatch passes one SIGUSR1 on and ignores the rest, so a repeat cannot stop it twice.
sent=""
for try in 1 2 3; do
    timeout 10 scancel -b -s USR1 "$j"; sent="$sent $?"
    wait_for 15 'grep -q "SIGUSR1 received" "$tmp/u.out"' && break
done
wait_for 40 'grep -q "requeueing job" "$tmp/u.out"'
ok "usr1: stopped with a checkpoint, requeued (scancel exit:$sent; job $(state "$j")): $(grep -v '^step' "$tmp/u.out" | tail -n 3)" \
   'grep -q "SIGUSR1 received: stopped after step" "$tmp/u.out" && grep -q "requeueing job $j" "$tmp/u.out"'
s=$(ckpt_step "$tmp/u")
# a requeued job waits BeginTime (about 2 minutes in Slurm 22.05): release it, but not within
# the second slurmd revoked its old credential ("Job credential revoked" kills a start then)
sleep 3
release() { [ "$(state "$1")" != PENDING ] || timeout 10 scontrol update JobId="$1" StartTime=now >/dev/null 2>&1; }
wait_for 60 'release "$j"; grep -q "resumed from .*step_0*$s at step $s" "$tmp/u.out"'; r=$?
ok "usr1: requeued job resumed from step ${s:-?}" '[ $r -eq 0 ]'
timeout 10 scancel "$j"
wait_for 40 '[ -z "$(state "$j" | grep -E "RUNNING|COMPLETING")" ]'
ok "usr1: metrics.jsonl contiguous 1..N across the requeue" \
   '[ "$(sed -n "s/^{\"step\":\([0-9]*\).*/\1/p" "$tmp/u/metrics.jsonl" | awk "\$1 != NR { bad = 1 } END { print bad + 0 }")" = 0 ]'

# 3. a time limit under the stop margin (600 s + 300 s of training) is refused
j=$(submit short -n2 -t 5)
wait_for 30 '[ -z "$(state "$j")" ] || [ "$(state "$j")" = FAILED ]'
ok "short limit: refused: $(tail -n 1 "$tmp/short.out" 2>/dev/null)" \
   'grep -q "time limit (5:00) leaves less than" "$tmp/short.out" && [ ! -e "$tmp/short/metrics.jsonl" ]'
# 4. the time limit: --signal=B:USR1@45 with a one-minute limit reaches the script about 15 s
# in (slurmctld checks signals about every 30 s); the ranks checkpoint and the job requeues
j=$(MMTRAIN_STOP_MARGIN=45 MMTRAIN_MIN_TRAIN=0 submit t -n2 -t 1 --signal=B:USR1@45)
wait_for 90 'grep -qs "requeueing job" "$tmp/t.out"'; r=$?
ok "time limit: USR1 ahead of the limit, checkpoint, requeue: $(grep -v '^step' "$tmp/t.out" | tail -n 2)" \
   '[ $r -eq 0 ] && grep -q "SIGUSR1 received: stopped after step" "$tmp/t.out"'
timeout 10 scancel "$j"
wait_for 40 '[ -z "$(state "$j" | grep -E "RUNNING|COMPLETING")" ]'

# 5. a normal user's job (the jobs above ran as root): checkpoint on scancel as well
if [ "$(id -u)" -eq 0 ] && id nobody >/dev/null 2>&1 && command -v runuser >/dev/null; then
    mkdir -p "$tmp/n"; chown nobody "$tmp/n"
    j=$(cd "$tmp/elsewhere" && env -u MMTRAIN_ROOT timeout 20 runuser -u nobody -- sbatch --parsable \
        -o "$tmp/n/job.out" -n2 -t 60 "$here/launch/slurm.sbatch" "$tmp/c.yaml" run.out_dir="$tmp/n/run")
    wait_for 40 '[ "$(steps "$tmp/n/run/metrics.jsonl")" -ge 20 ]'; r=$?
    ok "user nobody: job runs ($j): $(tail -n 1 "$tmp/n/job.out" 2>/dev/null)" '[ $r -eq 0 ]'
    timeout 10 scancel "$j"
    wait_for 40 '[ -z "$(state "$j" | grep -E "RUNNING|COMPLETING")" ]'
    s=$(ckpt_step "$tmp/n/run")
    ok "user nobody: scancel stops with a checkpoint at step ${s:-?}, no step lost" \
       '[ -n "$s" ] && grep -q "SIGTERM received: stopped after step $s" "$tmp/n/job.out" && [ "$(steps "$tmp/n/run/metrics.jsonl")" -eq "$s" ]'
fi
[ "${MM_SLURM_VERBOSE:-0}" = 0 ] || for f in "$tmp"/*.out "$tmp"/log/slurmctld.log; do echo "== $f"; grep -v "^step" "$f"; done
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
