#!/usr/bin/env bash
# cpu_isa.sh: exists to hold the promise of model/cpu/cpu_isa.h: the CPU backend computes the
# same bits at every x86-64 level it is cloned for (AVX-512, AVX2 + FMA, the SSE2 baseline),
# so a run resumed on another kind of node, or a job over mixed nodes, does not drift. The
# suite's build runs whichever clone this CPU picks; this test also builds the trainer with the
# clones pinned to x86-64-v3 and to the baseline (make CPU_ISA=...) and checks that 8 steps of
# the transformer (with the patch stem and with the conv stem) and of the diffusion model
# (configs of tests/ref/) give the same step lines and the same checkpoint tensors, bit for
# bit, in all three. The BLAS kernels are pinned
# (OPENBLAS_CORETYPE, as tests/ref/cases.sh pins them) so that only our own code is compared.
# On a CPU without AVX2/FMA it is skipped with a note. About 60 s on 2 cores.
set -u
B=${MM_BUILD:-build}
pass=0; fail=0
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
asan=0
case "$B" in *-asan) asan=1 ;; esac
B=$(cd "$B" && pwd) || { echo "FAIL: no build at ${MM_BUILD:-build}"; echo "0 passed, 1 failed"; exit 1; }
# shellcheck source=ref/cases.sh
. "$here/ref/cases.sh"  # REF_BLAS_CORE, ref_steps, ref_h5sha
if ! ref_cpu_runs_blas_core; then
    echo "note: this CPU lacks AVX2/FMA: the Haswell BLAS kernels and the v3 level cannot run here"
    echo "0 passed, 0 failed"; exit 0
fi
export OPENBLAS_CORETYPE=$REF_BLAS_CORE OMP_NUM_THREADS=1
REF_H5CANON=$tmp/h5canon
cc -std=c11 -O1 -o "$REF_H5CANON" "$here/ref/h5canon.c" \
    $(pkg-config --cflags --libs hdf5-serial 2>/dev/null || pkg-config --cflags --libs hdf5) \
    >"$tmp/cc.log" 2>&1 || { echo "FAIL: cannot compile tests/ref/h5canon.c"; echo "0 passed, 1 failed"; exit 1; }

cd "$tmp" || exit 1
"$B/mmdata" synth --out data --samples 64 --seed 11 >/dev/null 2>&1
ok "mmdata synth runs" '[ -d data/train ]'

# run BUILD NAME: both models (the transformer twice: patch and conv stems), 8 steps each,
# into $tmp/runs/NAME-MODEL; their step lines and tensors into $tmp/NAME.txt
run() {
    local bin=$1 name=$2 m cfg key
    for m in lm:tiny.yaml lmconv:tiny.yaml:model.stem=conv dit:diffusion_tiny.yaml; do
        IFS=: read -r m cfg key <<<"$m"
        m=$name-$m
        timeout 300 "$bin/train" "$here/ref/$cfg" data.train=data/train data.val= run.steps=8 \
            run.threads=1 run.log_every=1 eval.every=0 checkpoint.every=0 run.out_dir="runs/$m" \
            ${key:+"$key"} >"$m.log" 2>&1 || echo "$m: train failed: $(tail -n 2 "$m.log")"
        ref_steps "$m"
        ref_h5sha --tensors "runs/$m/ckpt/step_00000008/rank_00000.h5"
    done >"$name.txt" 2>&1
}
run "$B" native
ok "the suite's build trains both models ($(wc -l <"$tmp/native.txt") lines)" \
    '[ "$(grep -c "\"step\"" "$tmp/native.txt")" -eq 24 ] && ! grep -q "failed\|unreadable" "$tmp/native.txt"'

for isa in x86-64-v3 x86-64; do
    # a make of its own on both cores (the suite's make flags carry a jobserver this script
    # cannot reach), with the suite build's sanitizers when it has them
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -C "$root" --no-print-directory -j2 \
        BUILD="$tmp/b-$isa" CPU_ISA="$isa" ASAN="$asan" "$tmp/b-$isa/train" >"$tmp/make-$isa.log" 2>&1
    ok "make CPU_ISA=$isa builds: $(tail -n 2 "$tmp/make-$isa.log" | tr '\n' ' ' | head -c 300)" \
        '[ -x "$tmp/b-$isa/train" ]'
    run "$tmp/b-$isa" "$isa"
    d=$(diff "$tmp/native.txt" "$tmp/$isa.txt" | grep -m2 '^[<>]' | tr '\n' ' ')
    ok "CPU_ISA=$isa computes the bits of this CPU's own level: step lines and tensors${d:+; first difference: $d}" \
        '[ -z "$d" ] && [ -s "$tmp/$isa.txt" ]'
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
