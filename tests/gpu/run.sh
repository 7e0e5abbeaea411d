#!/usr/bin/env bash
# run.sh: the ONE command for a GPU machine (bash tests/gpu/run.sh). GPU time is scarce and a
# run may be the only one, so it is built to bring back as much as it can in one go, in under
# six minutes: every step runs under `timeout` (capped by what is left of a global budget),
# a failing step never stops the later ones, every step's output goes to a log under $OUT
# (default ./gpu-out), and a summary table closes the run (also $OUT/summary.txt).
#
# Steps:
#   env           nvidia-smi, nvcc, compiler and CPU facts (env.log)
#   deps          the libraries the full build needs; when missing, launch/deps.sh runs only
#                 if apt works here (a quick apt-get update), else a clear message
#   build         make cuda -j$(nproc) (build-cuda/); when the libraries are missing or the
#                 full build fails, make cuda-ops builds the op test and benchmark alone
#   test_ops_cuda every CUDA op and optimizer kernel against the CPU reference
#   bench_ops_cuda op times at GPT-2-small / DiT-S/2 shapes next to their matmuls, TFLOP/s
#   test_comm_nccl NCCL communicators and a device allreduce, 1 rank
#   placeholders  train 20 steps CPU vs GPU; checkpoint GPU->GPU resume and GPU->CPU load;
#                 GPT-2-small and DiT-S/2 throughput with MFU. They need the trainer's CUDA
#                 integration (issue 6, next phase) and report SKIP until then.
# Exit status 0 when no step failed or timed out. MM_GPU_BUDGET (seconds, default 345) and
# JOBS (default nproc) change the limits.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
OUT=${OUT:-$root/gpu-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUDGET=${MM_GPU_BUDGET:-345}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 8)}
start=$SECONDS
names=(); states=(); times=(); notes=()
bindir=""   # where the GPU programs were built

say() { echo "[run.sh $((SECONDS - start))s] $*"; }
record() {  # name state seconds note
    names+=("$1"); states+=("$2"); times+=("$3"); notes+=("$4")
    say "$1: $2 ($3s) $4"
}
counts() { grep -E '^[0-9]+ passed, [0-9]+ failed' "$1" 2>/dev/null | tail -n 1; }

# run_step NAME LIMIT LOG COMMAND...: the command under timeout min(LIMIT, time left), its
# output in LOG; records PASS, FAIL (exit status) or TIMEOUT. Returns the command's status.
run_step() {
    local name=$1 limit=$2 log=$3
    shift 3
    local left=$((BUDGET - (SECONDS - start) - 10))
    if [ "$left" -lt 5 ]; then
        record "$name" SKIP 0 "no time left in the ${BUDGET}s budget"
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "$name: started (limit ${limit}s, log ${log#$OUT/})"
    local t0=$SECONDS rc state note
    timeout --kill-after=5 "$limit" "$@" >"$log" 2>&1
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then state=TIMEOUT
    elif [ "$rc" -ne 0 ]; then state=FAIL
    else state=PASS; fi
    note=$(counts "$log")
    [ "$state" = PASS ] || note="${note:+$note; }exit $rc, see ${log#$OUT/}"
    record "$name" "$state" $((SECONDS - t0)) "$note"
    return "$rc"
}

# ---------------------------------------------------------------------------------------
step_env() {
    {
        echo "date: $(date -u)"; echo "host: $(hostname)"; echo "commit: $(git rev-parse HEAD 2>/dev/null)"
        git status --short 2>/dev/null | head -n 50
        echo "--- nvidia-smi"; timeout 20 nvidia-smi 2>&1
        echo "--- nvcc"; (command -v nvcc >/dev/null && nvcc --version) || /usr/local/cuda/bin/nvcc --version 2>&1
        echo "--- cc"; (mpicc --version 2>/dev/null || cc --version) 2>&1 | head -n 1
        echo "--- cpu"; nproc; grep -m1 'model name' /proc/cpuinfo
        echo "--- nccl"; ls /usr/include/nccl.h /usr/local/cuda/include/nccl.h 2>&1
    } >"$OUT/env.log" 2>&1
    record env PASS 0 "$(timeout 20 nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"
}

# 0 when the full build's libraries are here (after installing them if apt works)
step_deps() {
    local log=$OUT/deps.log t0=$SECONDS
    if make -s info >"$log" 2>&1; then
        record deps PASS $((SECONDS - t0)) "libraries present"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        record deps FAIL $((SECONDS - t0)) "libraries missing (deps.log) and no apt-get: install them; continuing with make cuda-ops"
        return 1
    fi
    say "deps: libraries missing; checking apt access (apt-get update, 45s at most)"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    if ! timeout 45 $sudo apt-get update -q >>"$log" 2>&1; then
        record deps FAIL $((SECONDS - t0)) "libraries missing and this machine has no apt access (apt-get update failed, deps.log): continuing with make cuda-ops"
        return 1
    fi
    run_step deps-install 150 "$OUT/deps-install.log" bash launch/deps.sh || return 1
    if make -s info >>"$log" 2>&1; then
        record deps PASS $((SECONDS - t0)) "installed by launch/deps.sh"
        return 0
    fi
    record deps FAIL $((SECONDS - t0)) "still missing after launch/deps.sh (deps.log)"
    return 1
}

step_build() {
    local full=$1
    if [ "$full" = 1 ] && run_step build 210 "$OUT/build.log" make cuda -j"$JOBS"; then
        bindir=build-cuda
        return 0
    fi
    if run_step build-ops 150 "$OUT/build-ops.log" make cuda-ops -j"$JOBS"; then
        bindir=build-cuda-ops
        return 0
    fi
    return 1
}

step_program() {  # name limit: runs $bindir/tests/gpu/name
    local name=$1 limit=$2 bin=$bindir/tests/gpu/$1
    if [ -z "$bindir" ] || [ ! -x "$bin" ]; then
        record "$name" SKIP 0 "not built"
        return 1
    fi
    run_step "$name" "$limit" "$OUT/$name.log" "$bin"
}

step_nccl() {
    local bin=$bindir/tests/gpu/test_comm_nccl
    if [ -z "$bindir" ] || [ ! -x "$bin" ]; then
        record test_comm_nccl SKIP 0 "not built (needs the full build and NCCL)"
        return 1
    fi
    if command -v mpirun >/dev/null 2>&1; then
        local root_flag=""
        [ "$(id -u)" -eq 0 ] && root_flag=--allow-run-as-root
        run_step test_comm_nccl 60 "$OUT/test_comm_nccl.log" \
            mpirun $root_flag --oversubscribe -np 1 "$bin"
    else
        run_step test_comm_nccl 60 "$OUT/test_comm_nccl.log" "$bin"
    fi
}

# --- placeholders: the steps that need the trainer's CUDA integration (next phase) --------
step_train_cpu_vs_gpu() {
    # to come: train configs/tiny.yaml 20 steps on the CPU and on the GPU (fp32), compare
    # every step's loss (and bf16 within a looser bound)
    record train-cpu-vs-gpu SKIP 0 "placeholder: needs the trainer's CUDA integration"
}
step_ckpt_resume() {
    # to come: GPU run stopped at step 10 and resumed == uninterrupted GPU run; the GPU
    # checkpoint loaded by the CPU trainer gives the same validation loss
    record ckpt-gpu-resume SKIP 0 "placeholder: needs the trainer's CUDA integration"
}
step_bench_throughput() {
    # to come: tokens/s and MFU of GPT-2 small (configs/gpt2_small_gpu.yaml) and images/s of
    # DiT-S/2 (configs/dit_s2_gpu.yaml), fp32 and bf16
    record bench-throughput SKIP 0 "placeholder: needs the trainer's CUDA integration"
}

# ---------------------------------------------------------------------------------------
say "out: $OUT, budget ${BUDGET}s, jobs $JOBS"
step_env
full=1
step_deps || full=0
step_build "$full"
step_program test_ops_cuda 60
step_program bench_ops_cuda 120
step_nccl
step_train_cpu_vs_gpu
step_ckpt_resume
step_bench_throughput

{
    echo
    echo "== summary ($((SECONDS - start))s, logs in $OUT) =="
    printf '%-18s %-8s %6s  %s\n' step state time note
    bad=0
    for i in "${!names[@]}"; do
        printf '%-18s %-8s %5ss  %s\n' "${names[$i]}" "${states[$i]}" "${times[$i]}" "${notes[$i]}"
        case "${states[$i]}" in FAIL|TIMEOUT) bad=$((bad + 1)) ;; esac
    done
    if [ -f "$OUT/test_ops_cuda.log" ]; then
        nf=$(grep -c 'FAIL' "$OUT/test_ops_cuda.log")
        if [ "$nf" -gt 0 ]; then
            echo "-- test_ops_cuda failures (first 20 of $nf lines):"
            grep 'FAIL' "$OUT/test_ops_cuda.log" | head -n 20
        fi
    fi
    if [ -f "$OUT/bench_ops_cuda.log" ]; then
        echo "-- bench_ops_cuda: kernels slower than the bf16 matmul next to them:"
        grep -- '<-- slower' "$OUT/bench_ops_cuda.log" || echo "   none"
    fi
    echo "$bad step(s) failed or timed out"
} | tee "$OUT/summary.txt"
[ "$(tail -n 1 "$OUT/summary.txt" | awk '{print $1}')" = 0 ]
