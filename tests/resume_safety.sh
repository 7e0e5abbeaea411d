#!/usr/bin/env bash
# resume_safety.sh: nothing committed lost, nothing silent (issue 16, items 2, 3, 4, 7, 8,
# 10, 14). A missing or damaged ckpt/latest resumes from the newest committed step; a step
# directory without COMMITTED is moved aside, kept; resume refuses a changed dataset (by
# content), seed, global batch or learning-rate schedule unless checkpoint.allow_changes
# names it, and accepts another dp x tp layout and d_ff written as its default; an
# unwritable ckpt/ is found at start; one job per run directory (LOCK), a crashed holder
# taken over; a full disk under metrics.jsonl stops the run with exit 1 naming the file.
# Every refusal is one "error:" line and an exit status of 1 or 2, never a crash.
set -u
B=${MM_BUILD:-build}
B=$(cd "$B" && pwd)
pass=0; fail=0
tmp=$(mktemp -d)
mounts=()
bg=()
cleanup() {
    for p in "${bg[@]}"; do kill -9 "$p" 2>/dev/null; done
    for m in "${mounts[@]}"; do umount "$m" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
run() { timeout 120 mpirun "${root[@]}" --oversubscribe -np "${NP:-1}" "$B/train" "$@"; }
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
# expect_refusal NAME PATTERN ARGS...: exit 1 or 2, one error line matching PATTERN, no crash
expect_refusal() {
    local name=$1 pat=$2; shift 2
    run "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?
    ok "$name: exit 1 or 2 (got $rc)" '[ $rc -eq 1 ] || [ $rc -eq 2 ]'
    ok "$name: message matches '$pat': $(grep -m1 error: "$tmp/err" | head -c 400)" \
        'grep -Eq "^error: .*$pat" "$tmp/err"'
    ok "$name: no crash" '! grep -Eqi "segmentation|sanitizer|core dumped|backtrace" "$tmp/err"'
}
steps_in() { grep -c '"loss"' "$1/metrics.jsonl" 2>/dev/null || echo 0; }

"$B/mmdata" synth --out "$tmp/d" --samples 32 --seed 3 >/dev/null &&
    "$B/mmdata" synth --out "$tmp/other" --samples 32 --seed 4 >/dev/null ||
    { echo "synth failed"; echo "0 passed, 1 failed"; exit 1; }
cp -a "$tmp/d" "$tmp/d_moved"
cfg() {  # cfg FILE OUT_DIR
    cat >"$1" <<YAML
run:
  out_dir: $2
  steps: 8
  threads: 1
data:
  train: $tmp/d/train
  val: ""
  global_batch: 4
  micro_batch: 2
model:
  d_model: 32
  n_layers: 1
  n_heads: 2
checkpoint:
  every: 2
  keep_last: 10
YAML
}
cfg "$tmp/c.yaml" "$tmp/base"
run "$tmp/c.yaml" run.stop_after=6 >"$tmp/out" 2>&1; rc=$?
ok "base run to step 6 exits 0 (rc $rc): $(tail -n 3 "$tmp/out")" '[ $rc -eq 0 ]'
ok "base: step 6 committed" '[ -f "$tmp/base/ckpt/step_00000006/COMMITTED" ]'
ok "base: LOCK released at exit" '[ ! -e "$tmp/base/LOCK" ]'
fresh() { rm -rf "$tmp/r"; cp -a "$tmp/base" "$tmp/r"; }

# --- item 3: latest missing or damaged ---
fresh; rm "$tmp/r/ckpt/latest"
run "$tmp/c.yaml" run.out_dir="$tmp/r" >"$tmp/out" 2>"$tmp/err"; rc=$?
ok "latest missing: exit 0 (rc $rc)" '[ $rc -eq 0 ]'
ok "latest missing: says so: $(head -c 300 "$tmp/err")" 'grep -q "latest is missing.*step_00000006" "$tmp/err"'
ok "latest missing: resumed at step 6" 'grep -q "resumed from .*step_00000006 at step 6" "$tmp/out"'
ok "latest missing: metrics.jsonl holds steps 1..8 once ($(steps_in "$tmp/r"))" '[ "$(steps_in "$tmp/r")" -eq 8 ]'
ok "latest missing: committed steps kept" '[ -f "$tmp/r/ckpt/step_00000002/COMMITTED" ]'
fresh; printf 'garbage\0\n' >"$tmp/r/ckpt/latest"
run "$tmp/c.yaml" run.out_dir="$tmp/r" >"$tmp/out" 2>"$tmp/err"; rc=$?
ok "latest damaged: exit 0 (rc $rc)" '[ $rc -eq 0 ]'
ok "latest damaged: says so and resumes from step 6: $(head -c 300 "$tmp/err")" \
    'grep -q "latest.*step_00000006" "$tmp/err" && grep -q "resumed from .*step_00000006" "$tmp/out"'

# --- item 7: a step without COMMITTED is moved aside, kept ---
fresh; rm "$tmp/r/ckpt/step_00000006/COMMITTED"
run "$tmp/c.yaml" run.out_dir="$tmp/r" >"$tmp/out" 2>"$tmp/err"; rc=$?
ok "uncommitted step: exit 0 (rc $rc): $(head -c 300 "$tmp/err")" '[ $rc -eq 0 ]'
ok "uncommitted step: says it moved it aside" 'grep -q "step_00000006 has no COMMITTED marker.*moved aside" "$tmp/err"'
ok "uncommitted step: kept with its tensors" 'ls "$tmp"/r/ckpt/step_00000006.uncommitted-*/rank_00000.h5 >/dev/null 2>&1'
ok "uncommitted step: resumed from step 4" 'grep -q "resumed from .*step_00000004" "$tmp/out"'
fresh; rm "$tmp/r/ckpt/step_00000006/COMMITTED" "$tmp/r/ckpt/step_00000004/COMMITTED" \
    "$tmp/r/ckpt/step_00000002/COMMITTED"
run "$tmp/c.yaml" run.out_dir="$tmp/r" >"$tmp/out" 2>"$tmp/err"; rc=$?
ok "only uncommitted steps: nothing deleted ($(ls "$tmp/r/ckpt" | tr '\n' ' '))" \
    '[ "$(ls -d "$tmp"/r/ckpt/step_0000000[246].uncommitted-* | wc -l)" -eq 3 ]'

# --- item 8: what makes resume exact ---
fresh; expect_refusal "seed changed" "run.seed from 1234 to 7.*allow_changes" "$tmp/c.yaml" run.out_dir="$tmp/r" run.seed=7
ok "seed changed: refused before training" '! grep -q "^step " "$tmp/out"'
fresh; run "$tmp/c.yaml" run.out_dir="$tmp/r" run.seed=7 'checkpoint.allow_changes=[seed]' >"$tmp/out" 2>&1; rc=$?
ok "seed changed, allowed: exit 0 (rc $rc)" '[ $rc -eq 0 ]'
ok "seed changed, allowed: logged in one line" 'grep -q "note: resume changes run.seed from 1234 to 7 (allowed" "$tmp/out"'
fresh; expect_refusal "global batch changed" "data.global_batch from 4 to 8" "$tmp/c.yaml" run.out_dir="$tmp/r" data.global_batch=8
fresh; expect_refusal "lr changed" "optim.lr from .* to 0.01" "$tmp/c.yaml" run.out_dir="$tmp/r" optim.lr=0.01
fresh; expect_refusal "warmup changed" "optim.warmup" "$tmp/c.yaml" run.out_dir="$tmp/r" optim.warmup=3
fresh; expect_refusal "steps changed" "run.steps from 8 to 10" "$tmp/c.yaml" run.out_dir="$tmp/r" run.steps=10
fresh; run "$tmp/c.yaml" run.out_dir="$tmp/r" run.steps=10 'checkpoint.allow_changes=[steps, lr]' optim.lr=0.002 >"$tmp/out" 2>&1; rc=$?
ok "steps+lr changed, allowed: exit 0, both logged (rc $rc)" \
    '[ $rc -eq 0 ] && grep -q "changes run.steps" "$tmp/out" && grep -q "changes optim.lr" "$tmp/out"'
fresh; expect_refusal "dropout changed" "model.dropout from 0 to 0.1.*regularization" "$tmp/c.yaml" run.out_dir="$tmp/r" model.dropout=0.1
fresh; expect_refusal "augmentation changed" "augment.translate from 0 to 2.*augment" "$tmp/c.yaml" run.out_dir="$tmp/r" augment.translate=2
fresh; run "$tmp/c.yaml" run.out_dir="$tmp/r" optim.label_smoothing=0.1 augment.translate=2 'checkpoint.allow_changes=[regularization, augment]' >"$tmp/out" 2>&1; rc=$?
ok "smoothing+augmentation changed, allowed: exit 0, both logged (rc $rc)" \
    '[ $rc -eq 0 ] && grep -q "changes optim.label_smoothing" "$tmp/out" && grep -q "changes augment.translate" "$tmp/out"'
fresh; expect_refusal "other dataset" "data.train from index-crc32:" "$tmp/c.yaml" run.out_dir="$tmp/r" data.train="$tmp/other/train"
fresh; run "$tmp/c.yaml" run.out_dir="$tmp/r" data.train="$tmp/d_moved/train" >"$tmp/out" 2>&1; rc=$?
ok "same dataset at another path: accepted (rc $rc): $(grep -m1 error "$tmp/out")" '[ $rc -eq 0 ]'
expect_refusal "unknown allow_changes name" "allow_changes" "$tmp/c.yaml" run.out_dir="$tmp/r" 'checkpoint.allow_changes=[model]'
fresh; NP=2 run "$tmp/c.yaml" run.out_dir="$tmp/r" >"$tmp/out" 2>&1; rc=$?
ok "another dp layout (2 ranks): accepted (rc $rc): $(grep -m1 error "$tmp/out")" \
    '[ $rc -eq 0 ] && grep -q "resumed from .*step_00000006" "$tmp/out"'

# a checkpoint saved before the dataset identity was recorded: resumes, saying so. Set
# MM_OLD_TRAIN to a `train` built from before (e.g. a worktree of an older commit).
if [ -n "${MM_OLD_TRAIN:-}" ] && [ -x "$MM_OLD_TRAIN" ]; then
    rm -rf "$tmp/old"
    timeout 120 "$MM_OLD_TRAIN" "$tmp/c.yaml" run.out_dir="$tmp/old" run.stop_after=4 >/dev/null 2>&1
    run "$tmp/c.yaml" run.out_dir="$tmp/old" >"$tmp/out" 2>&1; rc=$?
    ok "old checkpoint without data identity: resumes (rc $rc), says it could not check" \
        '[ $rc -eq 0 ] && grep -q "records no dataset identity.*could not be checked" "$tmp/out"'
else
    echo "skip: old checkpoint without data identity (set MM_OLD_TRAIN to an older build/train)"
fi

# --- item 14: d_ff compared resolved (0 = 4 x d_model) ---
fresh; run "$tmp/c.yaml" run.out_dir="$tmp/r" model.d_ff=128 >"$tmp/out" 2>&1; rc=$?
ok "d_ff=128 against a d_ff: 0 checkpoint (d_model 32): accepted (rc $rc): $(grep -m1 error "$tmp/out")" '[ $rc -eq 0 ]'
fresh; expect_refusal "d_ff really changed" "model.d_ff = 128, the config says 64" "$tmp/c.yaml" run.out_dir="$tmp/r" model.d_ff=64

# --- item 10: an unwritable ckpt/ is found at start ---
mkdir -p "$tmp/ro/ckpt"
if mount -t tmpfs -o ro,size=64k tmpfs "$tmp/ro/ckpt" 2>/dev/null; then
    mounts+=("$tmp/ro/ckpt")
    expect_refusal "read-only ckpt/" "ro/ckpt.*not writable.*before training" "$tmp/c.yaml" run.out_dir="$tmp/ro"
    ok "read-only ckpt/: no step trained" '! grep -q "^step " "$tmp/out" && [ "$(steps_in "$tmp/ro")" -eq 0 ]'
else
    echo "skip: read-only ckpt/ (cannot mount a tmpfs here)"
fi

# --- item 2: one job per run directory ---
cfg "$tmp/long.yaml" "$tmp/shared"
"$B/train" "$tmp/long.yaml" run.steps=1000000 checkpoint.every=0 >"$tmp/bg.out" 2>&1 &
p1=$!; bg+=("$p1")
for _ in $(seq 600); do [ "$(steps_in "$tmp/shared")" -gt 0 ] && break; sleep 0.1; done
ok "first job holds LOCK naming its pid" 'grep -q "pid $p1 " "$tmp/shared/LOCK"'
expect_refusal "second job on the same out_dir" "shared/LOCK: run directory in use by another job \(host .* pid $p1 " \
    "$tmp/long.yaml" run.steps=1000000 checkpoint.every=0
ok "second job: did not touch the first's metrics" 'kill -0 $p1'
kill -9 "$p1"; wait "$p1" 2>/dev/null
run "$tmp/long.yaml" run.steps=1000000 run.stop_after=2 checkpoint.every=0 >"$tmp/out" 2>&1; rc=$?
ok "after kill -9 a third job takes over (rc $rc): $(grep -m1 -E "error|note" "$tmp/out")" \
    '[ $rc -eq 0 ] && grep -q "taking over a stale run lock.*pid $p1 .*no longer runs" "$tmp/out"'
ok "third job released LOCK" '[ ! -e "$tmp/shared/LOCK" ]'
# a preemption (SIGTERM) stops with a checkpoint and releases LOCK
"$B/train" "$tmp/long.yaml" run.steps=1000000 checkpoint.every=0 >"$tmp/bg.out" 2>&1 &
p2=$!; bg+=("$p2")
for _ in $(seq 600); do [ "$(steps_in "$tmp/shared")" -gt 3 ] && break; sleep 0.1; done
kill -TERM "$p2"; wait "$p2"; rc=$?
ok "SIGTERM: exit 0 with a checkpoint (rc $rc)" '[ $rc -eq 0 ] && grep -q "checkpoint step" "$tmp/bg.out"'
ok "SIGTERM: LOCK released" '[ ! -e "$tmp/shared/LOCK" ]'
# a LOCK of another host: held while refreshed, stale after 5 minutes without
mkdir -p "$tmp/shared2"
printf 'host other-node-17 pid 4242 started 1700000000 (then)\n' >"$tmp/shared2/LOCK"
expect_refusal "LOCK of a live job on another host" "in use by another job \(host other-node-17 pid 4242" "$tmp/long.yaml" run.out_dir="$tmp/shared2"
touch -d '10 minutes ago' "$tmp/shared2/LOCK"
run "$tmp/long.yaml" run.out_dir="$tmp/shared2" run.steps=4 >"$tmp/out" 2>&1; rc=$?
ok "LOCK of another host not refreshed for 10 min: taken over (rc $rc)" \
    '[ $rc -eq 0 ] && grep -q "taking over a stale run lock.*not refreshed" "$tmp/out"'

# --- item 4: a full disk under metrics.jsonl ---
mkdir -p "$tmp/full"
if mount -t tmpfs -o size=1m tmpfs "$tmp/full" 2>/dev/null; then
    mounts+=("$tmp/full")
    dd if=/dev/zero of="$tmp/full/fill" bs=4k count=1000 2>/dev/null  # ENOSPC: fills up
    rm -f "$tmp/full/fill"; dd if=/dev/zero of="$tmp/full/fill" bs=4k count=$(( $(df -k --output=avail "$tmp/full" | tail -1) / 4 - 4 )) 2>/dev/null
    run "$tmp/c.yaml" run.out_dir="$tmp/full/r" run.steps=100000 checkpoint.every=0 >"$tmp/out" 2>"$tmp/err"; rc=$?
    ok "disk full: exit 1 (got $rc): $(grep -m1 error: "$tmp/err")" '[ $rc -eq 1 ]'
    ok "disk full: one line naming metrics.jsonl and the cause" \
        'grep -q "^error: .*full/r/metrics.jsonl: cannot write: No space left on device (disk full" "$tmp/err"'
    ok "disk full: no crash" '! grep -Eqi "segmentation|core dumped|backtrace" "$tmp/err"'
else
    echo "skip: disk full (cannot mount a tmpfs here)"
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
