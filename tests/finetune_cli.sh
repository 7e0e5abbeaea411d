#!/usr/bin/env bash
# finetune_cli.sh: fine-tuning and export through the command line and mpirun:
#   - init_from reshards: a base saved at tp=2 fine-tunes at tp=1, dp=2 and tp=2;
#   - a tp=2 fine-tune stopped (run.stop_after) and resumed (resume: auto) logs the same
#     losses, bit for bit, as an uninterrupted one;
#   - `train export` of a tp=2 checkpoint equals the export of the same weights saved at
#     tp=1 (re-saved by a one-step fine-tune with every group frozen), tensor by tensor;
#     both model kinds (the diffusion export carries /ema);
#   - the worked examples configs/finetune_tiny.yaml and configs/finetune_diffusion_tiny.yaml
#     load a base trained with configs/tiny.yaml / configs/diffusion_tiny.yaml;
#   - bad input is one "error:" line and a non-zero exit: export paths and options, a config
#     value that disagrees with the data (naming the config file), mismatched tensors,
#     `mmdata synth --only` with an unknown word.
set -u
B=${MM_BUILD:-build}
pass=0; fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
. "$(dirname "$0")/lib/runs.sh"  # train, trained, expect_error
losses() { grep -o '"step":[0-9]*,"loss":[^,]*,"lr":[^,]*,"grad_norm":[^,]*' "$tmp/$1/metrics.jsonl"; }
same_tensors() { "$B/tests/test_finetune" --same-tensors "$@"; }

"$B/mmdata" synth --out "$tmp/A" --samples 96 --seed 3 --only colour=red,green,blue >/dev/null &&
"$B/mmdata" synth --out "$tmp/B" --samples 96 --seed 4 --only colour=yellow,purple,white >/dev/null ||
    { echo "synth failed"; echo "0 passed, 1 failed"; exit 1; }
cat >"$tmp/c.yaml" <<YAML
run:
  steps: 4
  threads: 1
  log_every: 100
data:
  train: $tmp/A/train
  global_batch: 8
  micro_batch: 8
model:
  d_model: 32
  n_layers: 1
  n_heads: 2
optim:
  warmup: 1
YAML
ALLFROZEN=optim.freeze=text,image,audio,trunk

# --- the transformer: base at tp=2, fine-tunes at other layouts -----------------------
trained 2 base parallel.tp=2
trained 1 ft_tp1 data.train="$tmp/B/train" checkpoint.init_from="$tmp/base"
ok "tp=1 fine-tune loaded the tp=2 base" 'grep -q "23 of 23 tensors loaded" "$tmp/ft_tp1.log"'
trained 2 ft_dp2 data.train="$tmp/B/train" checkpoint.init_from="$tmp/base/ckpt" data.micro_batch=4
trained 2 ft_tp2 data.train="$tmp/B/train" checkpoint.init_from="$tmp/base" parallel.tp=2 run.steps=6
first_loss() { losses "$1" | head -n 1 | sed 's/.*"loss":\([^,]*\),.*/\1/'; }
ok "dp=2 and tp=1 fine-tunes agree on the first loss ($(first_loss ft_tp1) vs $(first_loss ft_dp2))" \
    'awk -v a="$(first_loss ft_tp1)" -v b="$(first_loss ft_dp2)" "BEGIN { d = a - b; if (d < 0) d = -d; exit !(a > 0 && d <= 1e-5 * a) }"'
# stop and resume the tp=2 fine-tune: its own checkpoint wins over init_from
trained 2 ft_rs data.train="$tmp/B/train" checkpoint.init_from="$tmp/base" parallel.tp=2 run.steps=6 run.stop_after=3
trained 2 ft_rs data.train="$tmp/B/train" checkpoint.init_from="$tmp/base" parallel.tp=2 run.steps=6
ok "the resumed fine-tune says it resumed" 'grep -q "resumed from .*step_00000003.*init_from is not used" "$tmp/ft_rs.log"'
ok "stopped + resumed tp=2 fine-tune logs the same 6 steps bit for bit" \
    '[ "$(losses ft_rs | wc -l)" -eq 6 ] && diff <(losses ft_tp2) <(losses ft_rs) >/dev/null'

# export: the tp=2 base vs the same weights re-saved at tp=1 by a frozen step
trained 1 resave checkpoint.init_from="$tmp/base" run.steps=1 $ALLFROZEN
"$B/train" export --ckpt "$tmp/base" --out "$tmp/base.h5" >"$tmp/exp1.log" 2>&1
ok "export of the tp=2 base: $(cat "$tmp/exp1.log")" '[ $? -eq 0 ] && grep -q "saved at tp 2 x dp 1" "$tmp/exp1.log"'
"$B/train" export --ckpt "$tmp/resave/ckpt/step_00000001" --out "$tmp/resave.h5" >"$tmp/exp2.log" 2>&1
ok "export of the tp=1 re-save: $(cat "$tmp/exp2.log")" '[ $? -eq 0 ] && grep -q "saved at tp 1 x dp 1" "$tmp/exp2.log"'
out=$(same_tensors "$tmp/base.h5" "$tmp/resave.h5" params)
ok "tp=2 and tp=1 exports hold the same tensors: $out" '[ "$out" = "same: 23 tensors" ]'
"$B/train" export --ckpt "$tmp/ft_tp1" --out "$tmp/ft.h5" >/dev/null 2>&1
out=$(same_tensors "$tmp/base.h5" "$tmp/ft.h5" params)
ok "the comparison can fail: a fine-tuned export differs ($out)" '[[ "$out" == differ:* ]]'

# freezing under ZeRO-1 (each dp rank updates a shard, then all-gathers): frozen bytes kept
trained 2 ft_zero data.train="$tmp/B/train" checkpoint.init_from="$tmp/base" parallel.zero=1 \
    data.micro_batch=4 optim.freeze=text,audio
"$B/train" export --ckpt "$tmp/ft_zero" --out "$tmp/ft_zero.h5" >/dev/null 2>&1
out=$(same_tensors "$tmp/base.h5" "$tmp/ft_zero.h5" params text. audio. lm_head.)
ok "ZeRO-1 dp=2: frozen text and audio tensors bit-identical: $out" '[ "$out" = "same: 6 tensors" ]'
out=$(same_tensors "$tmp/base.h5" "$tmp/ft_zero.h5" params blocks. img.)
ok "ZeRO-1 dp=2: the trained tensors moved: $out" '[[ "$out" == differ:* ]]'

# --- the diffusion model -------------------------------------------------------------
dit=(model.kind=diffusion model.patch=4 diffusion.enc_layers=1)
trained 2 dbase "${dit[@]}" parallel.tp=2
trained 1 dresave "${dit[@]}" checkpoint.init_from="$tmp/dbase" run.steps=1 optim.freeze=text,audio,trunk
ok "diffusion fine-tune EMA from /ema" 'grep -q "EMA from its /ema" "$tmp/dresave.log"'
"$B/train" export --ckpt "$tmp/dbase" --out "$tmp/dbase.h5" >"$tmp/exp3.log" 2>&1
ok "diffusion export has /params and /ema: $(cat "$tmp/exp3.log")" '[ $? -eq 0 ] && grep -q "(/params, /ema)" "$tmp/exp3.log"'
"$B/train" export --ckpt "$tmp/dresave" --out "$tmp/dresave.h5" >/dev/null 2>&1
out=$(same_tensors "$tmp/dbase.h5" "$tmp/dresave.h5" params)
ok "diffusion: tp=2 and tp=1 exports hold the same weights: $out" '[[ "$out" == same:* ]]'

# --- the worked examples against bases of the demo architectures ------------------------
# base_from CONFIG NAME: one step of the demo config itself, so that an architecture change
# there that the fine-tune example does not follow fails here
base_from() {
    OMP_NUM_THREADS=1 timeout 300 "$B/train" "$1" run.out_dir="$tmp/$2" run.steps=1 \
        data.train="$tmp/A/train" data.val= run.threads=1 >"$tmp/$2.log" 2>&1
    ok "$1: one-step base exits 0: $(tail -n 2 "$tmp/$2.log")" '[ $? -eq 0 ]'
}
base_from configs/tiny.yaml tinybase
sed -e "s|runs/finetune_tiny|$tmp/ex1|" -e "s|runs/demo|$tmp/tinybase|" \
    -e "s|my_data/|$tmp/B/|" configs/finetune_tiny.yaml >"$tmp/ex1.yaml"
OMP_NUM_THREADS=1 timeout 300 "$B/train" "$tmp/ex1.yaml" run.steps=1 data.val= run.threads=1 \
    >"$tmp/ex1.log" 2>&1
ok "configs/finetune_tiny.yaml fine-tunes a tiny.yaml base: $(tail -n 2 "$tmp/ex1.log")" \
    '[ $? -eq 0 ] && grep -q "initialized weights from" "$tmp/ex1.log"'
base_from configs/diffusion_tiny.yaml dtinybase
sed -e "s|runs/finetune_diffusion_tiny|$tmp/ex2|" -e "s|runs/demo_diffusion|$tmp/dtinybase|" \
    -e "s|my_data/|$tmp/B/|" configs/finetune_diffusion_tiny.yaml >"$tmp/ex2.yaml"
OMP_NUM_THREADS=1 timeout 300 "$B/train" "$tmp/ex2.yaml" run.steps=1 data.val= run.threads=1 \
    >"$tmp/ex2.log" 2>&1
ok "configs/finetune_diffusion_tiny.yaml fine-tunes a diffusion_tiny.yaml base: $(tail -n 2 "$tmp/ex2.log")" \
    '[ $? -eq 0 ] && grep -q "initialized weights from" "$tmp/ex2.log"'

# README's "Fine-tune on your own data" starts from launch/example_folder.sh's files
MMDATA="$B/mmdata" launch/example_folder.sh "$tmp/files" 12 >"$tmp/files.log" 2>&1 &&
"$B/mmdata" pack --manifest "$tmp/files/manifest.jsonl" --out "$tmp/packed" --val-fraction 0.25 \
    --schema-from "$tmp/A" >>"$tmp/files.log" 2>&1
ok "example_folder.sh + pack: 12 of 12 samples packed: $(tail -n 1 "$tmp/files.log")" \
    '[ $? -eq 0 ] && grep -q "packed 12 of 12 samples" "$tmp/files.log"'
# ... and the README's fine-tune of the tiny.yaml base trains on it
OMP_NUM_THREADS=1 timeout 300 "$B/train" "$tmp/ex1.yaml" run.out_dir="$tmp/ex1p" run.steps=1 \
    data.train="$tmp/packed/train" data.val="$tmp/packed/val" run.threads=1 >"$tmp/ex1p.log" 2>&1
ok "README: packed with --schema-from, configs/finetune_tiny.yaml fine-tunes on it: $(tail -n 2 "$tmp/ex1p.log")" \
    '[ $? -eq 0 ] && grep -q "initialized weights from" "$tmp/ex1p.log"'

# --- bad input ------------------------------------------------------------------------
expect_error "export: missing checkpoint" "$tmp/nope: cannot open" "$B/train" export --ckpt "$tmp/nope" --out "$tmp/x.h5"
expect_error "export: a dataset" "not a checkpoint" "$B/train" export --ckpt "$tmp/A" --out "$tmp/x.h5"
mkdir -p "$tmp/empty/ckpt"
expect_error "export: a run without checkpoints" "without a committed checkpoint" "$B/train" export --ckpt "$tmp/empty" --out "$tmp/x.h5"
cp -r "$tmp/resave/ckpt/step_00000001" "$tmp/resave/ckpt/step_00000002.tmp"
expect_error "export: an unfinished save" "unfinished save" "$B/train" export --ckpt "$tmp/resave/ckpt/step_00000002.tmp" --out "$tmp/x.h5"
expect_error "export: no --out" "--out FILE is required" "$B/train" export --ckpt "$tmp/base"
expect_error "export: unwritable --out" "$tmp/nodir/x.h5: cannot create" "$B/train" export --ckpt "$tmp/base" --out "$tmp/nodir/x.h5"
expect_error "export under mpirun -np 2" "single process" mpirun "${root[@]}" --oversubscribe -np 2 "$B/train" export --ckpt "$tmp/base" --out "$tmp/x.h5"
expect_error "config disagrees with the data" "c.yaml: data.img_h=64 but dataset .*/A/train has 32x32x3 images" \
    mpirun "${root[@]}" --oversubscribe -np 2 "$B/train" "$tmp/c.yaml" run.out_dir="$tmp/bad1" data.img_h=64 data.micro_batch=4
ok "nothing trained on a mismatch" '[ ! -e "$tmp/bad1/metrics.jsonl" ]'
expect_error "init_from of another width (2 ranks, one line)" "do not fit the model: .*checkpoint \\[32.*model \\[64" \
    mpirun "${root[@]}" --oversubscribe -np 2 "$B/train" "$tmp/c.yaml" run.out_dir="$tmp/bad2" \
    checkpoint.init_from="$tmp/base" model.d_model=64 data.micro_batch=4
ok "every mismatched tensor listed once" '[ "$(grep -c "^init_from: tensor " "$tmp/err")" -eq 23 ]'
expect_error "reinit glob naming nothing" "'nothing.\\*' names no tensor" \
    "$B/train" "$tmp/c.yaml" run.out_dir="$tmp/bad3" checkpoint.init_from="$tmp/base" checkpoint.reinit=nothing.*
expect_error "reinit without init_from" "c.yaml: checkpoint.reinit" \
    "$B/train" "$tmp/c.yaml" run.out_dir="$tmp/bad4" checkpoint.reinit=lm_head.w
expect_error "freeze an unknown group" "'vision' is not one of" \
    "$B/train" "$tmp/c.yaml" run.out_dir="$tmp/bad5" optim.freeze=vision
expect_error "mmdata synth --only unknown word" "'pink' is not a colour" \
    "$B/mmdata" synth --out "$tmp/C" --samples 10 --only colour=pink

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
