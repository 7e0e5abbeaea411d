#!/usr/bin/env bash
# recompute.sh: activation recomputation (model.recompute) changes no result. The trainer runs
# both model kinds at tp 1 and tp 2 (two MPI ranks) with recompute none, attention and block,
# and every step's loss and gradient norm of attention and block must be the same text as
# none's (metrics.jsonl, %.9g: what the CPU's deterministic ops give bitwise; a recomputed
# tensor that differed in one bit would change them within a few steps). Then the same on
# the emulated GPU (the CUDA backend of `make cuda-emu`, backend=cuda): none against block
# and attention at tp 1, and none against block at tp 2 on two emulated devices, which reruns
# the blocks' tp collectives on the device path. tests/test_recompute.c checks the gradients
# themselves bitwise and that the activation buffer shrinks.
# Prints "N passed, N failed".
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
B=${MM_BUILD:-build}
pass=0; fail=0
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
if ! command -v mpirun >/dev/null 2>&1; then echo "recompute: skipped: no mpirun"; echo "0 passed, 0 failed"; exit 0; fi
mpi=(mpirun --oversubscribe --bind-to none); [ "$(id -u)" -ne 0 ] || mpi+=(--allow-run-as-root)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

"$B/mmdata" synth --out "$tmp/d" --samples 32 --seed 5 >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
STEPS=6
cat >"$tmp/c.yaml" <<YAML
run: {steps: $STEPS, seed: 77, log_every: 100, threads: 1}
data: {train: $tmp/d/train, global_batch: 4, micro_batch: 2}
model: {kind: transformer, d_model: 32, n_layers: 3, n_heads: 2, patch: 8, audio_group: 2}
optim: {lr: 3.0e-3, min_lr: 1.0e-4, warmup: 2, weight_decay: 0.1, grad_clip: 1.0}
checkpoint: {every: 0}
YAML
dit=(model.kind=diffusion model.patch=4 diffusion.enc_layers=1 diffusion.pool_cond=true)

. tests/lib/bg.sh  # bg, bg_wait
# launch NAME NP BIN ARGS...: NP ranks into $tmp/NAME
launch() {
    local name=$1 np=$2 bin=$3; shift 3
    OMP_NUM_THREADS=1 MM_EMU_DEVICES=$np timeout 300 "${mpi[@]}" -np "$np" "$bin" "$tmp/c.yaml" \
        run.out_dir="$tmp/$name" "$@" >"$tmp/$name.log" 2>&1
}
# run NAME NP BIN ARGS...: launch, and check that it exits 0
run() {
    bg launch "$@"
    bg_wait
}
# the step, loss and grad_norm text of every step of a run
steps() { sed 's/.*"step":\([0-9]*\),"loss":\([^,]*\),.*"grad_norm":\([^,]*\),.*/\1 \2 \3/' "$tmp/$1/metrics.jsonl" 2>/dev/null; }
# same A B: B's per-step loss and grad_norm are A's text, for all STEPS steps
same() {
    local n; n=$(steps "$1" | wc -l)
    ok "$2: every step's loss and grad_norm are $1's ($n steps; first: $(steps "$2" | head -n 1))" \
        "[ $n -eq $STEPS ] && diff <(steps $1) <(steps $2) >/dev/null"
}

for kind in lm dit; do
    extra=(); [ $kind = dit ] && extra=("${dit[@]}")
    for tp in 1 2; do
        for mode in none attention block; do
            bg launch ${kind}_tp${tp}_$mode $tp "$B/train" parallel.tp=$tp model.recompute=$mode \
                "${extra[@]}"
            [ $tp -eq 2 ] && bg_wait  # two ranks take both cores
        done
        bg_wait
        same ${kind}_tp${tp}_none ${kind}_tp${tp}_attention
        same ${kind}_tp${tp}_none ${kind}_tp${tp}_block
    done
done

# the emulated GPU: the CUDA backend built against the CPU emulation (tests/cuda_layouts.sh)
. tests/lib/emu.sh
if ! emu_build "$tmp/build.log"; then
    fail=$((fail+1))
else
    for kind in lm dit; do
        extra=(); [ $kind = dit ] && extra=("${dit[@]}")
        for mode in none attention block; do
            bg launch ${kind}_gpu_$mode 1 "$emu/train" backend=cuda model.recompute=$mode "${extra[@]}"
        done
        bg_wait
        same ${kind}_gpu_none ${kind}_gpu_attention
        same ${kind}_gpu_none ${kind}_gpu_block
        for mode in none block; do
            run ${kind}_gpu_tp2_$mode 2 "$emu/train" backend=cuda parallel.tp=2 \
                model.recompute=$mode "${extra[@]}"
        done
        same ${kind}_gpu_tp2_none ${kind}_gpu_tp2_block
    done
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
