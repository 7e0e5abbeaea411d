#!/usr/bin/env bash
# blas_pick.sh: the restart with better OpenBLAS kernels (model/cpu/blas_cpu.c). OpenBLAS
# falls back to its SSE3 "Prescott" kernels on a CPU it does not know; the trainer then
# restarts itself with OPENBLAS_CORETYPE set to what the CPU supports. The test hook
# MM_TEST_BLAS_LOADED=Prescott makes any machine look like such a CPU:
#   - at 2 ranks, rank 0 says so once on stdout, naming the kernels /proc/cpuinfo's flags
#     call for, and the run's losses are bitwise those of a run with OPENBLAS_CORETYPE set
#     to those kernels by hand (the restarted process runs them: the fallback's differ);
#   - OPENBLAS_CORETYPE set by the user: no restart, no note;
#   - a bad config still fails with exactly one line on stderr, after the restart;
#   - kernels OpenBLAS did pick for the CPU (anything but the fallback) are kept.
# Skipped on a CPU without AVX2 + FMA (nothing better to ask for). Prints "N passed, N failed".
set -u
root_dir=$(cd "$(dirname "$0")/.." && pwd)
cd "$root_dir"
B=${MM_BUILD:-build}
pass=0; fail=0
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
if ! command -v mpirun >/dev/null 2>&1; then echo "blas_pick: skipped: no mpirun"; echo "0 passed, 0 failed"; exit 0; fi
flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { [[ " $flags " == *" $1 "* ]]; }
if has avx512f && has avx512bw && has avx512vl && has avx512dq && has avx512cd; then
    want=SkylakeX; has avx512_bf16 && want=Cooperlake
elif has avx2 && has fma; then want=Haswell
else echo "blas_pick: skipped: no AVX2 + FMA on this CPU"; echo "0 passed, 0 failed"; exit 0; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mpi=(mpirun --oversubscribe -np 2); [ "$(id -u)" -ne 0 ] || mpi+=(--allow-run-as-root)

"$B/mmdata" synth --out "$tmp/d" --samples 16 --seed 5 >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
cat >"$tmp/c.yaml" <<YAML
run: {steps: 3, seed: 7, log_every: 1, threads: 1}
data: {train: $tmp/d/train, global_batch: 4, micro_batch: 2}
model: {kind: transformer, d_model: 32, n_layers: 1, n_heads: 2, patch: 8, audio_group: 2}
checkpoint: {every: 0}
YAML
note="note: OpenBLAS does not know this CPU and loaded its Prescott kernels; this run uses its $want kernels"
losses() { grep -o '"loss":[^,]*\|"grad_norm":[^,]*' "$tmp/$1/metrics.jsonl" 2>/dev/null; }

env -u OPENBLAS_CORETYPE MM_TEST_BLAS_LOADED=Prescott "${mpi[@]}" "$B/train" "$tmp/c.yaml" \
    run.out_dir="$tmp/pick" >"$tmp/pick.out" 2>"$tmp/pick.err"
rc=$?
ok "the restarted run exits 0 (rc $rc): $(tail -n 2 "$tmp/pick.err")" '[ $rc -eq 0 ]'
ok "rank 0 notes the restart once, naming $want: $(grep -c '^note: OpenBLAS' "$tmp/pick.out") note(s)" \
    '[ "$(grep -c "^note: OpenBLAS" "$tmp/pick.out")" -eq 1 ] && grep -qF "$note" "$tmp/pick.out"'
OPENBLAS_CORETYPE=$want "${mpi[@]}" "$B/train" "$tmp/c.yaml" run.out_dir="$tmp/hand" \
    >"$tmp/hand.out" 2>&1
ok "its losses and gradient norms are bitwise a run with OPENBLAS_CORETYPE=$want set by hand" \
    '[ -n "$(losses pick)" ] && [ "$(losses pick)" = "$(losses hand)" ]'

OPENBLAS_CORETYPE=Haswell MM_TEST_BLAS_LOADED=Prescott "$B/train" "$tmp/c.yaml" \
    run.out_dir="$tmp/user" >"$tmp/user.out" 2>&1
ok "OPENBLAS_CORETYPE set by the user: no note" '! grep -q "^note: OpenBLAS" "$tmp/user.out"'
env -u OPENBLAS_CORETYPE MM_TEST_BLAS_LOADED=Haswell "$B/train" "$tmp/c.yaml" \
    run.out_dir="$tmp/known" >"$tmp/known.out" 2>&1
ok "kernels OpenBLAS chose itself (not the fallback): no note" \
    '! grep -q "^note: OpenBLAS" "$tmp/known.out"'

env -u OPENBLAS_CORETYPE MM_TEST_BLAS_LOADED=Prescott "$B/train" "$tmp/missing.yaml" \
    >"$tmp/bad.out" 2>"$tmp/bad.err"
rc=$?
ok "a missing config after the restart: rc $rc, one stderr line: $(head -n 2 "$tmp/bad.err")" \
    '[ $rc -ne 0 ] && [ "$(wc -l <"$tmp/bad.err")" -eq 1 ] && grep -q "^error: .*missing.yaml" "$tmp/bad.err"'

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
