#!/usr/bin/env bash
# backend_ref.sh: exists to hold the CPU numbers still: the build under test must reproduce,
# bit for bit, what the build the references were made from computed (tests/ref/made_with.txt
# names it; tests/ref/make_ref.sh made them, and says when remaking them is legitimate).
# Unlike dist_mpi.sh, which allows 1e-5 between layouts, nothing here has a tolerance: every
# comparison is of exact text or of SHA-256 sums. It checks:
#   - mmdata synth is deterministic (two runs, same bytes) and makes the reference data;
#   - the step lines (step, loss, lr, grad_norm as metrics.jsonl writes them, "%.9g") of 20
#     steps of configs/tiny.yaml at 1 rank, dp=2, tp=2 and dp=2 x tp=2 with ZeRO-1, and of
#     configs/diffusion_tiny.yaml at 1 rank and dp=2 (frozen copies in tests/ref/);
#   - every tensor of the final checkpoints of those runs (parameters, AdamW moments, EMA);
#   - the small fixtures (tests/ref/ckpt_lm, ckpt_dit: step 10 of 20, one rank): this build
#     makes the same ones (steps 1-10 and every tensor), and resuming the stored ones gives
#     the reference steps 11-20, evaluation at step 20 (val_loss, accuracies, generated
#     captions, the diffusion sample grid) and final checkpoint;
#   - `train export` of each fixture (its canonical content: tests/ref/h5canon.c) and
#     `train sample` from the diffusion fixture (caption; caption + sound), image by image;
#   - the command lines are those the references were made with (tests/ref/cmdlines.txt).
# What runs is defined once in tests/ref/cases.sh, shared with make_ref.sh. The references
# hold on any x86-64 with AVX2 and FMA: cases.sh pins OpenBLAS's kernels (Haswell's), and our
# own loops compute the same bits at every x86-64 level (tests/cpu_isa.sh checks that). On a
# CPU without AVX2 the test is skipped with a note. A failure means the numbers changed:
# find out why; do not regenerate the references to make it pass. About a minute on 2 cores.
set -u
B=${MM_BUILD:-build}
pass=0; fail=0
here=$(cd "$(dirname "$0")" && pwd)
ref=$here/ref
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
refdata() { grep -v '^#' "$1"; }  # a reference file without its comment line

REF_B=$(cd "$B" && pwd) || { echo "FAIL: no build at $B"; echo "0 passed, 1 failed"; exit 1; }
REF_HERE=$ref
REF_MPI_ROOT=(); [ "$(id -u)" -ne 0 ] || REF_MPI_ROOT=(--allow-run-as-root)
REF_H5CANON=$tmp/h5canon
# shellcheck source=ref/cases.sh
. "$ref/cases.sh"
if ! ref_cpu_runs_blas_core; then
    echo "note: this CPU lacks AVX2/FMA, so it cannot run the BLAS kernels the references pin"
    echo "0 passed, 0 failed"; exit 0
fi
# shellcheck disable=SC2046
cc -std=c11 -O1 -o "$REF_H5CANON" "$ref/h5canon.c" \
    $(pkg-config --cflags --libs hdf5-serial 2>/dev/null || pkg-config --cflags --libs hdf5) \
    >"$tmp/cc.log" 2>&1 ||
    { echo "FAIL: cannot compile tests/ref/h5canon.c: $(head -c 400 "$tmp/cc.log")"; echo "0 passed, 1 failed"; exit 1; }

# mmdata synth twice: the same bytes (the comparisons below need the very same data)
mkdir -p "$tmp/s1" "$tmp/s2" "$tmp/w"
"$REF_B/mmdata" synth --out "$tmp/s1/data" "${REF_SYNTH[@]}" >/dev/null 2>&1 &&
"$REF_B/mmdata" synth --out "$tmp/s2/data" "${REF_SYNTH[@]}" >/dev/null 2>&1
ok "mmdata synth ${REF_SYNTH[*]} runs" '[ $? -eq 0 ]'
ok "mmdata synth is deterministic: two runs write the same files ($(ref_data_sums "$tmp/s1/data" | wc -l) files)" \
    '[ -n "$(ref_data_sums "$tmp/s1/data")" ] && [ "$(ref_data_sums "$tmp/s1/data")" = "$(ref_data_sums "$tmp/s2/data")" ]'

(cd "$tmp/w" && ref_produce "$tmp/got" "$ref")
got=$tmp/got

ok "the command lines are those the references were made with: $(diff <(refdata "$ref/cmdlines.txt") "$got/cmdlines.txt" | head -n 4 | tr '\n' ' ')" \
    'diff <(refdata "$ref/cmdlines.txt") "$got/cmdlines.txt" >/dev/null'
while read -r name rc; do
    ok "$name exits 0 (rc $rc): $(tail -n 3 "$tmp/w/logs/$name.txt" 2>/dev/null | tr '\n' ' ' | head -c 400)" '[ "$rc" -eq 0 ]'
done <"$got/status.txt"
for k in lm dit; do
    ok "res_$k resumed from the stored fixture at step $REF_STOP" \
        'grep -q "^resumed from fix/ckpt_$k/$REF_CKPT_STEP at step $REF_STOP " "$tmp/w/logs/res_$k.txt"'
done

# step and evaluation lines: byte for byte; the message shows the first difference
for f in "$ref"/steps_*.txt "$ref"/evals_*.txt; do
    b=$(basename "$f")
    n=$(refdata "$f" | wc -l)
    d=$(diff <(refdata "$f") "$got/$b" 2>/dev/null | grep '^[<>]')
    first=$(echo "$d" | grep -m1 '^<' | cut -c3-); now=$(echo "$d" | grep -m1 '^>' | cut -c3-)
    ok "${b%.txt}: the $n lines equal the baseline's byte for byte${d:+; first difference: baseline ${first:-(none)}, this build ${now:-(none)}}" \
        '[ -z "$d" ] && [ -f "$got/$b" ]'
done

# sums: each label of the reference, and no label more or less
while read -r label sum; do
    now=$(awk -v l="$label" '$1 == l { print $2 }' "$got/sums.txt")
    short=${now:+${now:0:16}...}
    ok "$label: SHA-256 equals the baseline's (baseline ${sum:0:16}..., this build ${short:-missing})" \
        '[ "$now" = "$sum" ]'
done < <(refdata "$ref/sums.txt")
ok "the same outputs as the baseline, no more, no fewer: $(diff <(refdata "$ref/sums.txt" | cut -d' ' -f1) <(cut -d' ' -f1 "$got/sums.txt") | grep '^[<>]' | tr '\n' ' ')" \
    'diff <(refdata "$ref/sums.txt" | cut -d" " -f1) <(cut -d" " -f1 "$got/sums.txt") >/dev/null'
# the fixtures this build makes equal the stored ones (same tensors, read directly)
for k in lm dit; do
    a=$(ref_h5sha "$ref/ckpt_$k/$REF_CKPT_STEP/rank_00000.h5")
    b=$(ref_h5sha "$tmp/w/runs/fix_$k/ckpt/$REF_CKPT_STEP/rank_00000.h5" 2>/dev/null)
    ok "fixture ckpt_$k: this build's step-$REF_STOP checkpoint holds the stored fixture's tensors" '[ "$a" = "$b" ]'
done

if [ $fail -ne 0 ]; then
    cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //')
    echo "note: the references were made on: $(grep '^cpu:' "$ref/made_with.txt" | sed 's/^cpu: //'); this is: $cpu"
    echo "note: do not regenerate tests/ref/ to make this pass (tests/ref/make_ref.sh says why)"
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
