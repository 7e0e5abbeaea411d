#!/usr/bin/env bash
# cuda_dp.sh: data parallelism with backend: cuda on a machine without GPUs. The
# trainer of the CPU emulation build (`make cuda-emu`, tests/gpu/cuda_emu.h) runs 2 dp ranks
# with many small gradient buckets; there is no NCCL in that build, so train/gradsync.c's
# device buckets take their host path (event on the compute stream, download, non-blocking
# MPI allreduce while backward goes on, upload before the norm and AdamW): the same bucket
# order, hook and stream ordering as the NCCL path, another transport. Checked against the
# CPU trainer on the same 2 ranks: per-step losses and gradient norms within 1e-6 relative
# (the ops agree to ~1e-7, tests/gpu/test_ops_cuda); a bucket left unreduced or reduced
# twice changes the step's gradient norm by far more. The same for the diffusion model: one
# backend object serves both kinds, so its gradient buckets go the same way. Also: ZeRO-1 and
# tp > 1 are refused on cuda with the same one-line error for both kinds, and a NaN put into
# a device gradient skips the step naming the same tensor as the CPU does. The NCCL transport itself runs only on a GPU machine
# (tests/gpu/run.sh, test_comm_nccl). Prints "N passed, N failed".
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
B=${MM_BUILD:-build}
pass=0; fail=0
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
if ! command -v mpirun >/dev/null 2>&1; then echo "cuda_dp: skipped: no mpirun"; echo "0 passed, 0 failed"; exit 0; fi
case "$B" in *-asan) emu=build-cuda-emu-asan; flags=(ASAN=1) ;; *) emu=build-cuda-emu; flags=() ;; esac
mk() { env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make --no-print-directory -j2 "$@"; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$emu"
if ! flock "$emu/.lock" bash -c "$(declare -f mk); mk cuda-emu ${flags[*]:-}" >"$tmp/build.log" 2>&1; then
    echo "make cuda-emu failed:"; tail -n 20 "$tmp/build.log"; echo "0 passed, 1 failed"; exit 1
fi
mpi=(mpirun --oversubscribe); [ "$(id -u)" -ne 0 ] || mpi+=(--allow-run-as-root)

"$B/mmdata" synth --out "$tmp/d" --samples 32 --seed 3 >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
cat >"$tmp/c.yaml" <<YAML
run: {steps: 3, seed: 1234, log_every: 1, threads: 1}
data: {train: $tmp/d/train, global_batch: 4, micro_batch: 2}
model: {kind: transformer, d_model: 32, n_layers: 1, n_heads: 2, patch: 8, audio_group: 2}
optim: {lr: 2.0e-3, min_lr: 1.0e-4, warmup: 2, weight_decay: 0.1, grad_clip: 1.0}
parallel: {bucket_mb: 0.01}
checkpoint: {every: 0}
YAML
# run NAME BIN ARGS...: 2 ranks into $tmp/NAME. The emulation presents MM_EMU_DEVICES
# devices, 2 here, so each rank takes the device of its local rank as on a real node.
run() {
    local name=$1 bin=$2; shift 2
    OMP_NUM_THREADS=1 MM_EMU_DEVICES=${MM_EMU_DEVICES:-2} timeout 300 "${mpi[@]}" -np 2 "$bin" \
        "$tmp/c.yaml" run.out_dir="$tmp/$name" "$@" >"$tmp/$name.log" 2>&1
}
run cpu "$B/train"; rc=$?
ok "cpu dp 2 exits 0 (rc $rc): $(tail -n 3 "$tmp/cpu.log")" '[ $rc -eq 0 ]'
run gpu "$emu/train" backend=cuda; rc=$?
ok "emulated cuda dp 2 exits 0 (rc $rc): $(tail -n 3 "$tmp/gpu.log")" '[ $rc -eq 0 ]'
# key STEP VALUE lines of a run's metrics
vals() { grep -o "\"$2\":[^,}]*" "$tmp/$1/metrics.jsonl" | cut -d: -f2; }
for key in loss grad_norm; do
    res=$(paste <(vals cpu $key) <(vals gpu $key) | awk '
        { n++; d = $1 - $2; if (d < 0) d = -d; r = d / ($1 < 0 ? -$1 : $1); if (r > m) m = r }
        END { printf "%d steps, worst relative difference %.3g", n, m; exit !(n == 3 && m <= 1e-6) }')
    rc=$?
    ok "$key cpu vs emulated cuda, dp 2: $res" '[ $rc -eq 0 ]'
done

# a NaN put into a device gradient (MM_TEST_INJECT_NAN, survive.h's test hook) skips that
# step as on the CPU: the same message naming the same first non-finite tensor, and the same
# losses after it (nothing of the skipped step applied on either backend)
MM_TEST_INJECT_NAN=2 run cpunan "$B/train"; rc1=$?
MM_TEST_INJECT_NAN=2 run gpunan "$emu/train" backend=cuda; rc2=$?
skipmsg() { grep "^step 2: non-finite" "$tmp/$1.log"; }
nan_ok() {
    [ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] && skipmsg gpunan | grep -q "first in tensor" &&
        [ "$(skipmsg cpunan)" = "$(skipmsg gpunan)" ] &&
        grep -q '"step":2,.*"skipped":1' "$tmp/gpunan/metrics.jsonl"
}
ok "NaN at step 2, cpu and emulated cuda (rc $rc1 $rc2): $(skipmsg gpunan)" nan_ok
res=$(paste <(vals cpunan loss) <(vals gpunan loss) | awk '
    { n++; d = $1 - $2; if (d < 0) d = -d; r = d / ($1 < 0 ? -$1 : $1); if (r > m) m = r }
    END { printf "%d steps, worst relative difference %.3g", n, m; exit !(n == 3 && m <= 1e-6) }')
rc=$?
ok "losses around the skipped step, cpu vs emulated cuda: $res" '[ $rc -eq 0 ]'

# the diffusion model, dp 2: the same check (it shares the backend's buckets with the LM)
dit=(model.kind=diffusion model.patch=4 diffusion.enc_layers=1)
run dcpu "$B/train" "${dit[@]}"; rc1=$?
run dgpu "$emu/train" backend=cuda "${dit[@]}"; rc2=$?
ok "diffusion dp 2, cpu and emulated cuda exit 0 (rc $rc1 $rc2): $(tail -n 2 "$tmp/dgpu.log")" \
    '[ $rc1 -eq 0 ] && [ $rc2 -eq 0 ]'
for key in loss grad_norm; do
    res=$(paste <(vals dcpu $key) <(vals dgpu $key) | awk '
        { n++; d = $1 - $2; if (d < 0) d = -d; r = d / ($1 < 0 ? -$1 : $1); if (r > m) m = r }
        END { printf "%d steps, worst relative difference %.3g", n, m; exit !(n == 3 && m <= 1e-6) }')
    rc=$?
    ok "diffusion $key cpu vs emulated cuda, dp 2: $res" '[ $rc -eq 0 ]'
done

# refused layouts: one line naming the reason, non-zero exit, before any step; the same line
# for both model kinds (the backend's capabilities are checked once, by the trainer)
for kind in transformer diffusion; do
    run zero$kind "$emu/train" backend=cuda parallel.zero=1 model.kind=$kind; rc=$?
    ok "$kind: zero 1 on cuda refused (rc $rc): $(head -n 3 "$tmp/zero$kind.log")" \
        '[ $rc -ne 0 ] && grep -q "does not run ZeRO-1 yet (parallel.zero 1" "$tmp/zero$kind.log" && ! grep -q "^step" "$tmp/zero$kind.log"'
    run tp$kind "$emu/train" backend=cuda parallel.tp=2 model.kind=$kind; rc=$?
    ok "$kind: tp 2 on cuda refused (rc $rc): $(head -n 3 "$tmp/tp$kind.log")" \
        '[ $rc -ne 0 ] && grep -q "does not run tensor parallelism yet (parallel.tp 2)" "$tmp/tp$kind.log" && ! grep -q "^step" "$tmp/tp$kind.log"'
done
[ "$(grep -h '^error' "$tmp"/zerotransformer.log)" = "$(grep -h '^error' "$tmp"/zerodiffusion.log)" ]
ok "the same refusal for both kinds" '[ $? -eq 0 ]'

# more ranks on a node than GPUs: the rank without one stops the job at start, with one line
# naming the fix (at most as many ranks per node as GPUs)
MM_EMU_DEVICES=1 run onegpu "$emu/train" backend=cuda; rc=$?
ok "2 ranks on 1 emulated GPU refused (rc $rc): $(grep -m1 '^error' "$tmp/onegpu.log")" \
    '[ $rc -ne 0 ] && grep -q "local rank 1.*needs GPU 1, but 1 GPU(s) are visible.*start at most 1 rank(s) per node" "$tmp/onegpu.log" && ! grep -q "^step" "$tmp/onegpu.log"'
# and each rank on its own device when there are enough (the line the backend prints)
ok "2 emulated GPUs: rank 1 on GPU 1" 'grep -q "cuda: rank 1 on GPU 1 (cuda_emu 1" "$tmp/gpu.log"'
echo "$pass passed, $fail failed"
