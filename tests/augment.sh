#!/usr/bin/env bash
# augment.sh: augmentation (augment.* keys, data/augment.c) keeps the trainer's promises.
# With every transform on, a tiny transformer run
#   - trains on changed samples (its losses differ from the same run without augmentation);
#   - gives the same per-step losses at dp=2, dp=4, tp=2 and with gradient accumulation as one
#     process (and the diffusion model at dp=2 x tp=2), within 1e-5 relative (tests/dist_mpi.sh's tolerance: only the reduction order
#     may differ), because each sample's changes are drawn from (seed, sample id, epoch);
#   - resumes exactly: stopped at step 8 and resumed, its losses are the uninterrupted run's
#     to the last printed digit, on the same layout and on another dp;
# and evaluation sees unaugmented data: at learning rate 0 (the weights never move) the
# validation loss is bitwise the same with and without augmentation while the training loss
# is not. Bad augment settings are one-line errors.
set -u
B=${MM_BUILD:-build}
pass=0; fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }

"$B/mmdata" synth --out "$tmp/d" --samples 64 --seed 5 >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
STEPS=16  # two epochs of the 64 samples at global batch 8: the second epoch draws anew
aug=(augment.crop_scale=0.6 augment.crop_ratio=1.3 augment.flip=true augment.translate=2
     augment.brightness=0.2 augment.contrast=0.2 augment.saturation=0.2 augment.audio_shift=3
     augment.audio_gain_db=6 augment.time_masks=2 augment.time_mask_width=4
     augment.freq_masks=2 augment.freq_mask_width=4)
common=(data.train="$tmp/d/train" data.global_batch=8 model.d_model=32 model.n_layers=2
        model.n_heads=4 run.steps=$STEPS run.threads=1 checkpoint.every=0 run.log_every=100
        optim.warmup=2)
printf 'run:\n  seed: 7\n' >"$tmp/c.yaml"

# train NAME NP ARGS...: runs the trainer into $tmp/NAME
train() {
    local name=$1 np=$2; shift 2
    OMP_NUM_THREADS=1 timeout 120 mpirun "${root[@]}" --oversubscribe -np "$np" "$B/train" \
        "$tmp/c.yaml" "${common[@]}" run.out_dir="$tmp/$name" "$@" >"$tmp/$name.log" 2>&1
    local rc=$?
    ok "$name exits 0 (rc $rc): $(tail -n 3 "$tmp/$name.log")" '[ $rc -eq 0 ]'
}
. "$(dirname "$0")/lib/layout.sh"  # losses, same_losses
# exact_losses A B: the printed losses (%.9g) of every step are the same text
exact_losses() {
    local a=$1 b=$2
    ok "losses $a and $b identical at all $STEPS steps: $(diff <(losses "$a") <(losses "$b") | head -n 4 | tr '\n' ' ')" \
        '[ "$(losses "$a" | wc -l)" -eq $STEPS ] && diff <(losses "$a") <(losses "$b") >/dev/null'
}

train base 1 data.micro_batch=8 "${aug[@]}"
train plain 1 data.micro_batch=8
ok "augmentation changes what is trained on (step 1 loss $(losses base | head -n 1 | cut -d' ' -f2) vs $(losses plain | head -n 1 | cut -d' ' -f2))" \
    '[ "$(losses base | head -n 1)" != "$(losses plain | head -n 1)" ]'
train dp2 2 data.micro_batch=4 "${aug[@]}"
train dp4 4 data.micro_batch=2 "${aug[@]}"
train tp2 2 data.micro_batch=8 parallel.tp=2 "${aug[@]}"
train accum4 1 data.micro_batch=2 "${aug[@]}"
for r in dp2 dp4 tp2 accum4; do same_losses base $r; done
# the diffusion model, whose targets are the augmented images
dit=(model.kind=diffusion model.patch=4 diffusion.enc_layers=1)
train dbase 1 data.micro_batch=8 "${dit[@]}" "${aug[@]}"
train ddp2tp2 4 data.micro_batch=4 parallel.tp=2 "${dit[@]}" "${aug[@]}"
same_losses dbase ddp2tp2

# resume: stopped after step 8 (the end of epoch 0), then continued
train rs 1 data.micro_batch=8 run.stop_after=$((STEPS / 2)) "${aug[@]}"
train rs 1 data.micro_batch=8 "${aug[@]}"
ok "the resumed run said so" 'grep -qi "resum" "$tmp/rs.log"'
exact_losses base rs
train rsdp 2 data.micro_batch=4 run.stop_after=5 "${aug[@]}"
train rsdp 4 data.micro_batch=2 "${aug[@]}"
same_losses base rsdp

# evaluation sees unaugmented data: at lr 0 the model never changes, so val_loss must be
# bitwise the same with and without augmentation, while the training loss differs
ev=(data.val="$tmp/d/val" optim.lr=0 optim.min_lr=0 run.steps=2 eval.samples=32 eval.batch=16)
train evaug 1 data.micro_batch=8 "${ev[@]}" "${aug[@]}"
train evplain 1 data.micro_batch=8 "${ev[@]}"
vl() { grep -o '"val_loss":[^,}]*' "$tmp/$1/metrics.jsonl" | tail -n 1; }
ok "val_loss unaffected by augment.*: '$(vl evaug)' vs '$(vl evplain)'" \
    '[ -n "$(vl evaug)" ] && [ "$(vl evaug)" = "$(vl evplain)" ]'
ok "while the training loss is affected" '[ "$(losses evaug | head -n 1)" != "$(losses evplain | head -n 1)" ]'

# bad settings: one error line naming the key, before any step
bad() {
    local name=$1 pat=$2; shift 2
    OMP_NUM_THREADS=1 timeout 60 mpirun "${root[@]}" --oversubscribe -np 1 "$B/train" \
        "$tmp/c.yaml" "${common[@]}" run.out_dir="$tmp/$name" data.micro_batch=8 "$@" >"$tmp/$name.log" 2>&1
    local rc=$?
    ok "$name fails with one line matching '$pat' (rc $rc): $(grep error: "$tmp/$name.log" | head -n 2)" \
        '[ $rc -ne 0 ] && grep -Eq "^error: .*$pat" "$tmp/$name.log" && [ "$(grep -c "^error:" "$tmp/$name.log")" -eq 1 ] && [ ! -s "$tmp/$name/metrics.jsonl" ]'
}
bad badtr "d/train: augment.translate = 32 must be in \[0, 32\)" augment.translate=32
bad badscale "augment.crop_scale=0.*must be in" augment.crop_scale=0
bad badmask "augment.time_masks \(3\) and augment.time_mask_width \(0\)" augment.time_masks=3
bad badfreq "augment.freq_mask_width = 40 must be in \[0, 32\]" augment.freq_masks=1 augment.freq_mask_width=40

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
