#!/usr/bin/env bash
# cuda_layouts.sh: every parallel layout with backend: cuda, on a machine without GPUs. The
# trainer of the CPU emulation build (`make cuda-emu`, tests/gpu/cuda_emu.h) presents
# MM_EMU_DEVICES devices, one per local rank as on a real node, and runs dp 2, tp 2 and
# dp 2 x tp 2, each with and without ZeRO-1, for both model kinds (and ZeRO-1 over 3 ranks
# of a model whose size 3 does not divide), 20 steps each, against
# the single-rank CPU run: per-step loss and gradient norm within 1e-5 relative (only the
# fp32 summation order differs; a tp collective or gradient bucket left out, or a ZeRO shard
# applied twice, changes them by far more). There is no NCCL in the emulation build, so
# every device collective takes the CUDA backend's host path (download, MPI, upload, in
# stream order; the gradient buckets overlap backward with non-blocking MPI): the same
# collectives in the same order as the NCCL path, another transport. The NCCL calls
# themselves run on a GPU machine (tests/gpu/run.sh).
# Also: stop + resume at another layout (a ZeRO-1 dp 2 x tp 2 GPU checkpoint resumed on one
# CPU rank and at dp 2; a CPU checkpoint resumed on GPUs at tp 2 with ZeRO-1) continues the
# same samples in every step and the same losses, and resuming at the same layout is
# bitwise exact; ZeRO-1 on one rank (what one real GPU checks) is bitwise the run without
# it; precision bf16 on one GPU and at dp 2 x tp 2 stays within 1e-3 of the fp32 CPU losses;
# a NaN put into a device gradient skips the step as on the CPU; more ranks on a node than
# GPUs is refused; the bf16 one-GPU run gives the same bits with the emulator's schedule
# reversed and serialised (CUEMU_ORDER, tests/gpu/cuda_emu.cc).
# Prints "N passed, N failed".
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
B=${MM_BUILD:-build}
pass=0; fail=0
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
if ! command -v mpirun >/dev/null 2>&1; then echo "cuda_layouts: skipped: no mpirun"; echo "0 passed, 0 failed"; exit 0; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
. tests/lib/emu.sh
. tests/lib/bg.sh  # bg, bg_wait
emu_build "$tmp/build.log" || { echo "0 passed, 1 failed"; exit 1; }
mpi=(mpirun --oversubscribe --bind-to none); [ "$(id -u)" -ne 0 ] || mpi+=(--allow-run-as-root)

"$B/mmdata" synth --out "$tmp/d" --samples 32 --seed 3 >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
STEPS=20
cat >"$tmp/c.yaml" <<YAML
run: {steps: $STEPS, seed: 1234, log_every: 100, threads: 1}
data: {train: $tmp/d/train, global_batch: 4, micro_batch: 2, trace: true}
model: {kind: transformer, d_model: 32, n_layers: 1, n_heads: 2, patch: 8, audio_group: 2}
optim: {lr: 2.0e-3, min_lr: 1.0e-4, warmup: 2, weight_decay: 0.1, grad_clip: 1.0}
parallel: {bucket_mb: 0.01}
checkpoint: {every: 0}
YAML
dit=(model.kind=diffusion model.patch=4 diffusion.enc_layers=1)

# run NAME NP BIN ARGS...: NP ranks into $tmp/NAME, one emulated device per rank
run() {
    local name=$1 np=$2 bin=$3; shift 3
    OMP_NUM_THREADS=1 MM_EMU_DEVICES=${MM_EMU_DEVICES:-$np} timeout 300 "${mpi[@]}" -np "$np" \
        "$bin" "$tmp/c.yaml" run.out_dir="$tmp/$name" "$@" >"$tmp/$name.log" 2>&1
}
# train NAME NP BIN ARGS...: run, and check it exits 0
train() {
    bg run "$@"
    bg_wait
}
# STEP VALUE lines of a run's metrics for key
vals() { grep -o "\"step\":[0-9]*,.*" "$tmp/$1/metrics.jsonl" | sed "s/\"step\":\([0-9]*\),.*\"$2\":\([^,}]*\).*/\1 \2/"; }
# same A B KEY FROM TOL: steps FROM..STEPS of B's KEY within TOL relative of A's
same() {
    local a=$1 b=$2 key=$3 from=$4 tol=$5 res rc
    res=$(join <(vals "$a" "$key" | sort -k1,1) <(vals "$b" "$key" | sort -k1,1) | awk -v from="$from" -v steps=$STEPS -v tol="$tol" '
        $1 >= from { n++; d = $2 - $3; if (d < 0) d = -d; r = d / ($2 < 0 ? -$2 : $2); if (r > m) m = r }
        END { printf "steps %d..%d: %d compared, worst relative difference %.3g", from, steps, n, m
              exit !(n == steps - from + 1 && m <= tol) }')
    rc=$?
    ok "$key $a vs $b, $res (tolerance $tol)" '[ $rc -eq 0 ]'
}
# the sorted sample ids of each step (all ranks, all micro-steps together)
step_ids() { cat "$tmp/$1"/trace/rank_*.txt | awk '{ for (i = 4; i <= NF; i++) print $1, $i }' | sort -n -k1,1 -k2,2; }
same_ids() { ok "$2 trains on the same samples in every step as $1" "diff <(step_ids $1) <(step_ids $2) >/dev/null"; }

# every layout of 2 and 4 ranks, +- ZeRO-1, both kinds, against one CPU rank
layouts=("dp2 2" "tp2 2 parallel.tp=2" "dp2tp2 4 parallel.tp=2")
for kind in lm dit; do
    extra=(); [ $kind = dit ] && extra=("${dit[@]}")
    train ${kind}_cpu 1 "$B/train" "${extra[@]}"
    bg run ${kind}_g1 1 "$emu/train" backend=cuda "${extra[@]}"
    bg run ${kind}_z1 1 "$emu/train" backend=cuda parallel.zero=1 "${extra[@]}"
    bg_wait
    # ZeRO-1 on one rank: its collectives are copies, so bitwise the run without it
    ok "$kind ZeRO-1 on one emulated GPU: losses bitwise those without ZeRO" \
        "[ -s $tmp/${kind}_z1/metrics.jsonl ] && cmp -s <(vals ${kind}_g1 loss) <(vals ${kind}_z1 loss)"
    for l in "${layouts[@]}"; do
        set -- $l; name=$1 np=$2; shift 2
        train ${kind}_$name $np "$emu/train" backend=cuda "$@" "${extra[@]}"
        train ${kind}_${name}z $np "$emu/train" backend=cuda parallel.zero=1 "$@" "${extra[@]}"
    done
    for r in z1 dp2 dp2z tp2 tp2z dp2tp2 dp2tp2z; do
        for key in loss grad_norm; do same ${kind}_cpu ${kind}_$r $key 1 1e-5; done
    done
done
same_ids lm_cpu lm_dp2tp2z
# precision bf16 (bf16 matmuls, flash attention on tensor cores: HD 16 here) through the whole
# trainer, on one emulated GPU and at dp 2 x tp 2 with ZeRO-1: within 1e-3 of the fp32 CPU
# losses (bf16 rounds operands to 2^-9; the difference measured here is ~5e-5, for the
# transformer's bf16 activations too; on an H200, before the tensor-core flash kernels and
# with fp32 activations, 7e-5), and not equal to the fp32 GPU run's, or bf16 did not take
# effect; both model kinds with bf16 activations (their tp sums in bf16; the DiT ~2.4e-4).
# tests/gpu/test_ops_cuda and test_act16_cuda check each op's bf16 result closely;
# this checks that the trainer runs them together.
for kind in lm dit; do
    extra=(); [ $kind = dit ] && extra=("${dit[@]}")
    bg run ${kind}_b1 1 "$emu/train" backend=cuda precision=bf16 "${extra[@]}"
    # the whole trainer's kernels with the emulator's threads and warps run the other way
    # round, one warp at a time (a race between GPU threads shows as other bits)
    CUEMU_ORDER=serial-reverse bg run ${kind}_b1r 1 "$emu/train" backend=cuda precision=bf16 \
        "${extra[@]}"
    bg_wait
    train ${kind}_b4 4 "$emu/train" backend=cuda precision=bf16 parallel.tp=2 parallel.zero=1 \
        "${extra[@]}"
    for r in b1 b4; do same ${kind}_cpu ${kind}_$r loss 1 1e-3; done
    ok "$kind bf16 under CUEMU_ORDER=serial-reverse: losses and grad norms bitwise the same" \
        "[ -s $tmp/${kind}_b1r/metrics.jsonl ] && cmp -s <(vals ${kind}_b1 loss) <(vals ${kind}_b1r loss) && cmp -s <(vals ${kind}_b1 grad_norm) <(vals ${kind}_b1r grad_norm)"
    ok "$kind bf16 runs with bf16 activations" \
        "grep -q 'precision bf16 (bf16 activations)' $tmp/${kind}_b1.log"
    ok "$kind bf16 losses are not the fp32 GPU run's" \
        "[ -s $tmp/${kind}_b1/metrics.jsonl ] && ! cmp -s <(vals ${kind}_g1 loss) <(vals ${kind}_b1 loss)"
done
# ZeRO-1 over 3 emulated GPUs of a model of 50,468 parameters (d_model 31): 3 equal blocks
# and a tail of 2 the last rank owns (reduce-scatter and all-gather in place in the model's
# buffers, the tail allreduced)
odd=(model.d_model=31 model.n_heads=1 data.global_batch=6)
train odd_cpu 1 "$B/train" "${odd[@]}"
train odd_z3 3 "$emu/train" backend=cuda parallel.zero=1 "${odd[@]}"
for key in loss grad_norm; do same odd_cpu odd_z3 $key 1 1e-5; done
ok "4 ranks on 4 emulated GPUs: rank 3 on GPU 3" 'grep -q "cuda: rank 3 on GPU 3 (cuda_emu 3" "$tmp/lm_dp2tp2z.log"'

# stop + resume at another layout. The transformer: a ZeRO-1 dp 2 x tp 2 GPU run stopped
# after step 10, resumed on one CPU rank, and at dp 2 with ZeRO-1 on GPUs
run lm_rs 4 "$emu/train" backend=cuda parallel.zero=1 parallel.tp=2 run.stop_after=10
cp -r "$tmp/lm_rs" "$tmp/lm_rs_cpu"; cp -r "$tmp/lm_rs" "$tmp/lm_rs_dp2z"; cp -r "$tmp/lm_rs" "$tmp/lm_rs_same"
train lm_rs_cpu 1 "$B/train"
train lm_rs_dp2z 2 "$emu/train" backend=cuda parallel.zero=1
train lm_rs_same 4 "$emu/train" backend=cuda parallel.zero=1 parallel.tp=2
for r in lm_rs_cpu lm_rs_dp2z; do same lm_cpu $r loss 11 1e-5; same_ids lm_cpu $r; done
# at the same layout, bit for bit the run that never stopped
ok "resumed at the same layout (ZeRO-1 dp 2 x tp 2): losses bitwise those of the run that did not stop" \
    'cmp -s <(vals lm_dp2tp2z loss) <(vals lm_rs_same loss)'
# the diffusion model: a CPU run stopped after step 10 resumed on GPUs at tp 2 with ZeRO-1
run dit_rs 1 "$B/train" run.stop_after=10 "${dit[@]}"
train dit_rs 2 "$emu/train" backend=cuda parallel.tp=2 parallel.zero=1 "${dit[@]}"
same dit_cpu dit_rs loss 11 1e-5
same_ids dit_cpu dit_rs

# a NaN put into a device gradient (MM_TEST_INJECT_NAN, survive.h's test hook) skips that
# step as on the CPU: the same message naming the same first non-finite tensor, and the same
# losses after it (nothing of the skipped step applied on either backend)
MM_TEST_INJECT_NAN=2 run cpunan 2 "$B/train" run.steps=3; rc1=$?
MM_TEST_INJECT_NAN=2 run gpunan 2 "$emu/train" backend=cuda run.steps=3; rc2=$?
skipmsg() { grep "^step 2: non-finite" "$tmp/$1.log"; }
nan_ok() {
    [ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] && skipmsg gpunan | grep -q "first in tensor" &&
        [ "$(skipmsg cpunan)" = "$(skipmsg gpunan)" ] &&
        grep -q '"step":2,.*"skipped":1' "$tmp/gpunan/metrics.jsonl"
}
ok "NaN at step 2, cpu and emulated cuda (rc $rc1 $rc2): $(skipmsg gpunan)" nan_ok
STEPS=3 same cpunan gpunan loss 1 1e-6

# more ranks on a node than GPUs: the rank without one stops the job at start, with one line
# naming the fix (at most as many ranks per node as GPUs)
MM_EMU_DEVICES=1 run onegpu 2 "$emu/train" backend=cuda; rc=$?
ok "2 ranks on 1 emulated GPU refused (rc $rc): $(grep -m1 '^error' "$tmp/onegpu.log")" \
    '[ $rc -ne 0 ] && grep -q "local rank 1.*needs GPU 1, but 1 GPU(s) are visible.*start at most 1 rank(s) per node" "$tmp/onegpu.log" && ! grep -q "^step" "$tmp/onegpu.log"'
echo "$pass passed, $fail failed"
