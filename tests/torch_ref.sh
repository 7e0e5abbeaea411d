#!/usr/bin/env bash
# torch_ref.sh: train/MODEL.md suffices to rebuild the models. train/ref_torch.py, a PyTorch
# implementation written from the documents, reads `train export`'s file and the validation
# set and must reproduce what the trainer logged:
#   - the transformer trained at tp=1 and at tp=2 (mpirun -np 2): val_loss and the per-mode
#     val_loss_image/_audio/_both within 1e-6 relative, and every greedy caption of
#     eval/step_*.jsonl (as given and image only) byte for byte;
#   - the diffusion model (flow with x-prediction, logit-normal times and pooled
#     conditioning at tp=2; DDPM at tp=1): val_loss within 1e-6 relative;
#   - and it can fail: an export with one bias nudged by 1e-3 does not match.
# The reference computes in float64, so the differences printed are the trainer's fp32
# rounding (about 1e-8 here). Skipped, as "0 passed, 0 failed", where torch, h5py, PyYAML
# or mpirun is missing.
set -u
B=${MM_BUILD:-build}
PY=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
ref="$here/../train/ref_torch.py"
if ! "$PY" -c 'import torch, h5py, yaml, numpy' 2>/dev/null; then
    echo "torch_ref: skipped: $PY cannot import torch, h5py, yaml and numpy"
    echo "0 passed, 0 failed"; exit 0
fi
if ! command -v mpirun >/dev/null 2>&1; then
    echo "torch_ref: skipped: no mpirun"; echo "0 passed, 0 failed"; exit 0
fi
pass=0; fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }

"$B/mmdata" synth --out "$tmp/d" --samples 96 --seed 5 >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
printf 'run:\n  seed: 7\n' >"$tmp/c.yaml"
common=(data.train="$tmp/d/train" data.val="$tmp/d/val" data.global_batch=8 model.d_model=32
        model.n_layers=2 model.n_heads=4 run.threads=1 run.log_every=100 optim.warmup=2
        eval.samples=24 eval.batch=5)

# check NAME NP ARGS...: train into $tmp/NAME on NP ranks, export, and compare the reference
check() {
    local name=$1 np=$2; shift 2
    OMP_NUM_THREADS=1 timeout 300 mpirun "${root[@]}" --oversubscribe -np "$np" "$B/train" \
        "$tmp/c.yaml" "${common[@]}" run.out_dir="$tmp/$name" "$@" >"$tmp/$name.log" 2>&1
    local rc=$?
    ok "$name trains (rc $rc): $(tail -n 3 "$tmp/$name.log")" '[ $rc -eq 0 ]'
    "$B/train" export --ckpt "$tmp/$name" --out "$tmp/$name.h5" >"$tmp/$name.export" 2>&1
    rc=$?
    ok "$name exports (rc $rc): $(cat "$tmp/$name.export")" '[ $rc -eq 0 ]'
    "$PY" "$ref" "$tmp/$name.h5" --run "$tmp/$name" --captions >"$tmp/$name.ref" 2>&1
    rc=$?
    sed "s/^/  $name: /" "$tmp/$name.ref" | grep -v '^  [^:]*: {'
    ok "$name: the PyTorch reference matches the run (rc $rc)" '[ $rc -eq 0 ]'
}

# 60 steps at a high learning rate: captions that start to depend on the image and the sound
lm=(data.micro_batch=8 run.steps=60 optim.lr=4e-3 eval.every=60 checkpoint.every=60)
check lm_tp1 1 "${lm[@]}"
check lm_tp2 2 "${lm[@]}" parallel.tp=2
ok "lm_tp2 compared its captions and its four losses" \
    'grep -q "captions: [1-9][0-9]* of" "$tmp/lm_tp2.ref" && [ "$(grep -c "^val_loss.*relative difference" "$tmp/lm_tp2.ref")" -eq 4 ]'

dit=(model.kind=diffusion model.patch=4 diffusion.enc_layers=1 diffusion.eval_samples=0
     data.micro_batch=8 run.steps=6 eval.every=6 checkpoint.every=6)
check dit_tp2 2 "${dit[@]}" parallel.tp=2 diffusion.predict=x diffusion.t_sampling=logit_normal \
    diffusion.pool_cond=true
check dit_ddpm 1 "${dit[@]}" diffusion.objective=ddpm

# it can fail: one bias moved by 1e-3 must show
"$PY" - "$tmp/lm_tp1.h5" <<'EOF'
import sys, h5py
with h5py.File(sys.argv[1], "r+") as f:
    f["params/ln_f.b"][0] += 1e-3
EOF
"$PY" "$ref" "$tmp/lm_tp1.h5" --run "$tmp/lm_tp1" >"$tmp/bad.ref" 2>&1
rc=$?
ok "a nudged export does not match (rc $rc): $(grep '^val_loss:' "$tmp/bad.ref")" '[ $rc -eq 1 ]'

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
