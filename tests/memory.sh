#!/usr/bin/env bash
# memory.sh: the memory estimate printed before the first step, and the refusal of a run
# that cannot fit, before anything large is allocated: one line with the estimate by part
# and what to change, a non-zero exit, no abort or backtrace. On the CPU against the host's
# available memory (a d_model of 65536 needs hundreds of GiB); on emulated GPUs against
# the device's memory (MM_EMU_DEVICE_MIB makes an emulated GPU small). The estimate is
# also checked against what a run then holds on the emulated device after its first step
# (every device buffer is allocated by then and never freed): the estimate must cover it,
# without being more than twice it. Prints "N passed, N failed".
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
B=${MM_BUILD:-build}
pass=0; fail=0
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
. tests/lib/emu.sh
emu_build "$tmp/build.log" || { echo "0 passed, 1 failed"; exit 1; }
"$B/mmdata" synth --out "$tmp/d" --samples 16 --seed 3 >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
cat >"$tmp/c.yaml" <<YAML
run: {steps: 2, seed: 1, log_every: 1, threads: 1}
data: {train: $tmp/d/train, global_batch: 4, micro_batch: 4}
model: {kind: transformer, d_model: 64, n_layers: 2, n_heads: 2, patch: 8, audio_group: 2}
checkpoint: {every: 0}
YAML
# trainer NAME BIN ARGS...: one process into $tmp/NAME
trainer() {
    local name=$1 bin=$2; shift 2
    OMP_NUM_THREADS=1 timeout 120 "$bin" "$tmp/c.yaml" run.out_dir="$tmp/$name" "$@" >"$tmp/$name.log" 2>&1
}
refused() {  # NAME RC: non-zero, one error line naming the estimate and the fixes, no step
    local log=$tmp/$1.log
    [ "$2" -ne 0 ] && [ "$2" -lt 128 ] && grep -Eq '^error: memory: this run needs about .* (MiB|GiB) per rank = weights' "$log" &&
        grep -q 'data.micro_batch' "$log" && grep -q 'model.recompute: block' "$log" &&
        grep -q 'parallel.tp' "$log" &&
        ! grep -q '^step' "$log" && ! grep -qi 'backtrace\|abort' "$log"
}

# the estimate is printed at start, with the activations per block for each recompute setting
trainer small "$B/train"; rc=$?
ok "a run that fits trains (rc $rc) and prints its estimate: $(grep -m1 '^memory' "$tmp/small.log")" \
    '[ $rc -eq 0 ] && grep -Eq "^memory: .* (MiB|GiB) per rank = weights" "$tmp/small.log"'
ok "activations per block under each recompute setting: $(grep -m1 '^activations' "$tmp/small.log")" \
    'grep -q "^activations per block .* none .* MiB, attention .* MiB, block .* MiB" "$tmp/small.log"'
# and model.recompute block lowers the estimate's activations
trainer rblock "$B/train" model.recompute=block; rc=$?
act() { sed -n 's/^memory: .* activations \([0-9.]*\) + .*/\1/p' "$tmp/$1.log"; }
ok "recompute block trains (rc $rc) and its activations are smaller: $(act small) vs $(act rblock) MiB" \
    '[ $rc -eq 0 ] && awk -v a="$(act small)" -v b="$(act rblock)" "BEGIN { exit !(b < a) }"'

# CPU: far more than the host has (issue: d_model 65536 aborted with a backtrace)
trainer huge "$B/train" model.d_model=65536 model.n_heads=1; rc=$?
ok "d_model 65536 on the CPU refused before training (rc $rc): $(grep -m1 '^error' "$tmp/huge.log" | cut -c1-160)" 'refused huge $rc'

# emulated GPU of 16 MiB: refused; of 4 GiB: runs
MM_EMU_DEVICES=1 MM_EMU_DEVICE_MIB=16 trainer gsmall "$emu/train" backend=cuda model.d_model=256 model.n_heads=4; rc=$?
ok "a run bigger than an emulated 16 MiB GPU refused (rc $rc): $(grep -m1 '^error' "$tmp/gsmall.log" | cut -c1-160)" \
    'refused gsmall $rc && grep -q "of its GPU" "$tmp/gsmall.log"'
MM_EMU_DEVICES=1 trainer gok "$emu/train" backend=cuda model.d_model=256 model.n_heads=4; rc=$?
ok "the same run on an emulated 4 GiB GPU trains (rc $rc)" '[ $rc -eq 0 ]'
# the estimate against what the device holds after the first step
line=$(grep -m1 '^memory: .* in use on the device after step 1' "$tmp/gok.log")
used=$(echo "$line" | sed -n 's/^memory: \([0-9.]*\) MiB in use.*estimate \([0-9.]*\) MiB.*/\1 \2/p')
ok "estimate covers the device memory after step 1 and is at most twice it: $line" \
    '[ -n "$used" ] && echo "$used" | awk "{ exit !(\$2 >= \$1 && \$2 <= 2 * \$1) }"'
echo "$pass passed, $fail failed"
