#!/usr/bin/env bash
# dist_mpi.sh: a run's result must not depend on how it is split. Trains a tiny model with
# mpirun under many layouts and checks, against one process:
#   - per-step losses equal within 1e-5 relative (only the reduction order may differ) for
#     dp=2, dp=4, tp=2, tp=4, dp=2 x tp=2, gradient accumulation, and ZeRO-1, for the
#     transformer, and for the diffusion model under dp, tp, dp x tp and ZeRO-1;
#   - every sample exactly once per epoch by sample id over all ranks, and the same samples
#     in every step whatever the layout;
#   - resume on a different dp continues the same sample order and losses;
#   - resharding: saved at tp=2 x dp=2, resumed at tp=1 x dp=1 and at tp=4 x dp=1;
#   - bad layouts are one-line errors before any work starts.
set -u
B=${MM_BUILD:-build}
pass=0; fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }

"$B/mmdata" synth --out "$tmp/d" --samples 64 --seed 5 >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
STEPS=16  # two epochs of the 64 samples at global batch 8
common=(data.train="$tmp/d/train" data.global_batch=8 model.d_model=32 model.n_layers=2
        model.n_heads=4 run.steps=$STEPS run.threads=1 checkpoint.every=0 run.log_every=100
        optim.warmup=2 data.trace=true)
printf 'run:\n  seed: 7\n' >"$tmp/c.yaml"

# train NAME NP ARGS...: runs the trainer into $tmp/NAME
train() {
    local name=$1 np=$2; shift 2
    OMP_NUM_THREADS=1 timeout 300 mpirun "${root[@]}" --oversubscribe -np "$np" "$B/train" \
        "$tmp/c.yaml" "${common[@]}" run.out_dir="$tmp/$name" "$@" >"$tmp/$name.log" 2>&1
    local rc=$?
    ok "$name exits 0 (rc $rc): $(tail -n 3 "$tmp/$name.log")" '[ $rc -eq 0 ]'
}
. "$(dirname "$0")/lib/layout.sh"  # losses, same_losses
# the sorted sample ids of each step (all ranks, all micro-steps together)
step_ids() { cat "$tmp/$1"/trace/rank_*.txt | awk '{ for (i = 4; i <= NF; i++) print $1, $i }' | sort -n -k1,1 -k2,2; }

train base 1 data.micro_batch=8
train dp2 2 data.micro_batch=4
train dp4 4 data.micro_batch=2
train tp2 2 data.micro_batch=8 parallel.tp=2
train tp4 4 data.micro_batch=8 parallel.tp=4
train dp2tp2 4 data.micro_batch=4 parallel.tp=2
train accum4 1 data.micro_batch=2
train zero2 2 data.micro_batch=4 parallel.zero=1
train zero2tp2 4 data.micro_batch=4 parallel.zero=1 parallel.tp=2
for r in dp2 dp4 tp2 tp4 dp2tp2 accum4 zero2 zero2tp2; do same_losses base $r; done
# ZeRO-1 over 3 ranks of a model of 50,468 parameters (d_model 31): 50,468 = 3 x 16,822 + 2,
# so the last rank also owns a tail of 2 that the collectives' equal blocks leave over;
# then its AdamW state, gathered from 3 blocks and the tail, resumed on one rank
odd=(model.d_model=31 model.n_heads=1 data.global_batch=6)
train obase 1 data.micro_batch=6 "${odd[@]}"
train ozero3 3 data.micro_batch=2 parallel.zero=1 "${odd[@]}"
ok "the odd model has 50468 parameters" 'grep -q "model: 50468 parameters" "$tmp/ozero3.log"'
same_losses obase ozero3
train orsz 3 data.micro_batch=2 parallel.zero=1 run.stop_after=$((STEPS / 2)) "${odd[@]}"
train orsz 1 data.micro_batch=6 "${odd[@]}"
same_losses obase orsz
same_losses dp2 zero2

# exactly once per epoch (8 steps of 8 = the 64 samples), over all ranks together
for r in base dp4 dp2tp2; do
    for e in 0 1; do
        n=$(step_ids $r | awk -v e=$e 'int(($1 - 1) / 8) == e { print $2 }' | sort -n | uniq | wc -l)
        t=$(step_ids $r | awk -v e=$e 'int(($1 - 1) / 8) == e' | wc -l)
        ok "$r epoch $e: $t ids, $n distinct (want 64, 64)" '[ "$n" -eq 64 ] && [ "$t" -eq 64 ]'
    done
done
for r in dp2 dp4 tp2 dp2tp2 accum4; do
    ok "$r trains on the same samples in every step as one process" 'diff <(step_ids base) <(step_ids $r) >/dev/null'
done

# resume on a different dp: half the steps at dp=2, the rest at dp=4
train rs 2 data.micro_batch=4 run.stop_after=$((STEPS / 2))
train rs 4 data.micro_batch=2
same_losses base rs
ok "resume at another dp continues the sample order" 'diff <(step_ids base) <(step_ids rs) >/dev/null'

# resharding: saved at tp=2 x dp=2, resumed at tp=1 x dp=1 and at tp=4 x dp=1
train rsh 4 data.micro_batch=4 parallel.tp=2 run.stop_after=$((STEPS / 2))
cp -r "$tmp/rsh" "$tmp/rsh1"; cp -r "$tmp/rsh" "$tmp/rsh4"
train rsh1 1 data.micro_batch=8
train rsh4 4 data.micro_batch=8 parallel.tp=4
same_losses base rsh1
same_losses base rsh4

# the diffusion model: same losses under dp, tp, dp x tp and ZeRO-1 (its noise, times and
# condition dropout are drawn per sample id, so they do not depend on the layout either)
dit=(model.kind=diffusion model.patch=4 diffusion.enc_layers=1)
train dbase 1 data.micro_batch=8 "${dit[@]}"
train ddp2 2 data.micro_batch=4 "${dit[@]}"
train dtp2 2 data.micro_batch=8 parallel.tp=2 "${dit[@]}"
train ddp2tp2 4 data.micro_batch=4 parallel.tp=2 "${dit[@]}"
train dzero2 2 data.micro_batch=4 parallel.zero=1 "${dit[@]}"
for r in ddp2 dtp2 ddp2tp2 dzero2; do same_losses dbase $r; done

# bad layouts: errors before any work starts
OMP_NUM_THREADS=1 timeout 60 mpirun "${root[@]}" --oversubscribe -np 4 "$B/train" "$tmp/c.yaml" \
    "${common[@]}" run.out_dir="$tmp/bad1" data.micro_batch=2 parallel.tp=3 >"$tmp/bad1.log" 2>&1
rc=$?
ok "tp=3 on 4 ranks fails (rc $rc): $(grep error: "$tmp/bad1.log" | head -n 2)" \
    '[ $rc -ne 0 ] && grep -q "^error: .*tp.*3.*4" "$tmp/bad1.log" && [ ! -e "$tmp/bad1/metrics.jsonl" ]'
OMP_NUM_THREADS=1 timeout 60 mpirun "${root[@]}" --oversubscribe -np 4 "$B/train" "$tmp/c.yaml" \
    "${common[@]}" run.out_dir="$tmp/bad2" data.micro_batch=8 parallel.tp=4 model.n_heads=2 >"$tmp/bad2.log" 2>&1
rc=$?
ok "tp=4 with 2 heads fails (rc $rc): $(grep error: "$tmp/bad2.log" | head -n 2)" \
    '[ $rc -ne 0 ] && grep -q "^error: .*head" "$tmp/bad2.log" && [ ! -e "$tmp/bad2/metrics.jsonl" ]'
ok "one error line per failure, not one per rank" '[ "$(grep -c "^error:" "$tmp/bad2.log")" -eq 1 ]'

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
