#!/usr/bin/env bash
# regularize.sh: the transformer's regularisation (model.dropout, model.attn_dropout,
# model.modality_drop, model.audio_drop, optim.label_smoothing) through the trainer, all on:
#   - it acts: the per-step losses differ from the same run without it;
#   - resume is bit-exact: stopped at step 4 and resumed, every step's loss and gradient norm
#     are the uninterrupted run's text (%.9g);
#   - the layout does not matter: dp 2, dp 4, gradient accumulation and tp 2 give the one-rank
#     losses within 1e-5 relative (the masks and modality draws are counters of the sample id,
#     not of the rank or micro-batch; only the reduction order differs, as in dist_mpi.sh);
#   - the emulated GPU (the CUDA kernels, `make cuda-emu`) gives the CPU's losses within 1e-5:
#     both backends draw the same masks from the shared model/model_drop.h.
# That evaluation is untouched (train 0: no dropout, plain cross-entropy) is checked bitwise
# by tests/test_regularize.c, the gradients by tests/test64_gradcheck.c.
# Prints "N passed, N failed".
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
B=${MM_BUILD:-build}
pass=0; fail=0
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
if ! command -v mpirun >/dev/null 2>&1; then echo "regularize: skipped: no mpirun"; echo "0 passed, 0 failed"; exit 0; fi
mpi=(mpirun --oversubscribe); [ "$(id -u)" -ne 0 ] || mpi+=(--allow-run-as-root)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

"$B/mmdata" synth --out "$tmp/d" --samples 48 --seed 5 >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
STEPS=8
cat >"$tmp/c.yaml" <<YAML
run: {steps: $STEPS, seed: 77, log_every: 100, threads: 1}
data: {train: $tmp/d/train, global_batch: 8, micro_batch: 8}
model: {kind: transformer, d_model: 32, n_layers: 2, n_heads: 4, patch: 8, audio_group: 2,
        dropout: 0.1, attn_dropout: 0.1, modality_drop: 0.25, audio_drop: 0.3}
optim: {lr: 3.0e-3, min_lr: 1.0e-4, warmup: 2, label_smoothing: 0.1}
checkpoint: {every: 0}
YAML

# train NAME NP ARGS...: NP ranks into $tmp/NAME; checks that it exits 0
train() {
    local name=$1 np=$2; shift 2
    OMP_NUM_THREADS=1 timeout 120 "${mpi[@]}" -np "$np" "$B/train" "$tmp/c.yaml" \
        run.out_dir="$tmp/$name" "$@" >"$tmp/$name.log" 2>&1
    local rc=$?
    ok "$name exits 0 (rc $rc): $(tail -n 2 "$tmp/$name.log")" '[ $rc -eq 0 ]'
}
steps() { sed 's/.*"step":\([0-9]*\),"loss":\([^,]*\),.*"grad_norm":\([^,]*\),.*/\1 \2 \3/' "$tmp/$1/metrics.jsonl" 2>/dev/null; }
losses() { steps "$1" | cut -d' ' -f1,2; }
# close A B: B has every step and its losses are A's within 1e-5 relative
close() {
    local res
    res=$(join <(losses "$1") <(losses "$2") | awk -v steps=$STEPS '
        { n++; d = $2 - $3; if (d < 0) d = -d; r = d / ($2 < 0 ? -$2 : $2); if (r > w) w = r }
        END { printf "%d steps, worst %.3g", n, w; exit !(n == steps && w <= 1e-5) }')
    local rc=$?
    ok "losses $2 vs $1: $res" '[ $rc -eq 0 ]'
}

train base 1
train plain 1 model.dropout=0 model.attn_dropout=0 model.modality_drop=0 model.audio_drop=0 \
    optim.label_smoothing=0
n_diff=$(join <(losses base) <(losses plain) | awk '$2 != $3' | wc -l)
ok "regularisation changes the losses ($n_diff of $STEPS steps differ)" '[ "$n_diff" -ge $((STEPS - 1)) ]'

train stop 1 run.stop_after=$((STEPS / 2))
train stop 1
ok "resume at step $((STEPS / 2)) is bit-exact: $(steps stop | tail -n 1) vs $(steps base | tail -n 1)" \
    "[ \$(steps stop | wc -l) -eq $STEPS ] && diff <(steps base) <(steps stop) >/dev/null"

train dp2 2 data.micro_batch=4
train dp4 4 data.micro_batch=2
train accum 1 data.micro_batch=2
train tp2 2 parallel.tp=2
for r in dp2 dp4 accum tp2; do close base $r; done

. tests/lib/emu.sh
if ! emu_build "$tmp/build.log"; then
    fail=$((fail+1))
else
    B=$emu train gpu 1 backend=cuda
    close base gpu
fi
echo "$pass passed, $fail failed"
