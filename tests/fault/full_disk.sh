#!/usr/bin/env bash
# fault/full_disk.sh: a full disk on a small tmpfs (issue 16, item 1). `mmdata pack` and a
# single-process `train` whose output (checkpoint, eval file) fills the disk must stop with
# exit 1 and one error line saying "disk full" and naming the file: no SIGSEGV from HDF5's exit-time cleanup after a
# failed H5Fclose, no raw HDF5 text cut mid-word. A run whose later checkpoint fills the disk
# keeps its last committed checkpoint, and a rerun with space resumes from it.
# Needs root (or CAP_SYS_ADMIN) to mount a tmpfs; prints "skipped" with a zero count otherwise.
set -u
B=${MM_BUILD:-build}
pass=0; fail=0
tmp=$(mktemp -d)
mnt=$tmp/mnt
mkdir -p "$mnt"
cleanup() { umount "$mnt" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
if ! mount -t tmpfs -o size=3m tmpfs "$mnt" 2>"$tmp/mount.err"; then
    echo "skipped: cannot mount a tmpfs ($(head -c 200 "$tmp/mount.err"))"
    echo "0 passed, 0 failed"; exit 0
fi
# fill FREE_KB: leaves about FREE_KB kilobytes free on the tmpfs
fill() {
    rm -f "$mnt/fill"
    local free; free=$(df -k --output=avail "$mnt" | tail -n 1 | tr -d ' ')
    [ "$free" -gt "$1" ] && dd if=/dev/zero of="$mnt/fill" bs=1k count=$((free - $1)) 2>/dev/null
    return 0
}
# expect_full NAME PATH_PATTERN: exit 1, one error line with "disk full" and the path, no crash
expect_full() {
    local name=$1 pat=$2 rc=$3 want=${4:-1}
    ok "$name: exit $want (got $rc)" '[[ $rc == $want ]]'
    ok "$name: one 'disk full' line naming $pat: $(head -c 300 "$tmp/err")" \
        '[ "$(grep -c "^error: " "$tmp/err")" -eq 1 ] && grep -Eq "^error: .*$pat.*disk full" "$tmp/err"'
    ok "$name: no crash, no HDF5 noise" \
        '! grep -Eqi "segmentation|signal|backtrace|HDF5|infinite loop|#[0-9]{3}:" "$tmp/err"'
}

"$B/mmdata" synth --out "$tmp/d" --samples 32 >/dev/null || { echo "synth failed"; echo "0 passed, 1 failed"; exit 1; }

# pack: caption-only samples at 64x64 make 12 KB image rows; 200 of them do not fit in 300 KB
for i in $(seq 1 200); do echo "{\"caption\": \"a red circle number $i\"}"; done >"$tmp/m.jsonl"
fill 300
"$B/mmdata" pack --manifest "$tmp/m.jsonl" --out "$mnt/pk" --image-size 64 >/dev/null 2>"$tmp/err"
expect_full "pack" "$mnt/pk[^ ]*shard_[0-9]+\\.h5" $?
ok "pack: no output folder left" '[ ! -e "$mnt/pk" ] && [ -z "$(ls -d "$mnt"/pk.* 2>/dev/null)" ]'

cat >"$tmp/cfg.yaml" <<YAML
run:
  out_dir: $tmp/run
  steps: 3
  threads: 1
data:
  train: $tmp/d/train
  val: $tmp/d/val
  global_batch: 4
  micro_batch: 2
model:
  d_model: 32
  n_layers: 1
  n_heads: 2
eval:
  samples: 8
  batch: 8
YAML
# train: the final checkpoint (~520 KB) does not fit in 300 KB
rm -rf "$mnt/r"; fill 300
"$B/train" "$tmp/cfg.yaml" run.out_dir="$mnt/r" run.steps=2 checkpoint.every=0 data.val= \
    >"$tmp/out" 2>"$tmp/err"
expect_full "train, final save" "$mnt/r/ckpt/[^ ]*" $?

# train: the evaluation's eval/step_*.jsonl (32 lines of an untrained model's long captions,
# over 10 KB) does not fit in the 8 KB left after config.yaml and metrics.jsonl
rm -rf "$mnt/r"; fill 16
"$B/train" "$tmp/cfg.yaml" run.out_dir="$mnt/r" run.steps=1 checkpoint.every=0 eval.samples=32 \
    >"$tmp/out" 2>"$tmp/err"
expect_full "train, eval file" "$mnt/r/eval/step_00000001\\.jsonl" $?

# train with checkpoints every step: two fit in 1200 KB, the third fills the disk; the
# committed step 2 stays, and a rerun with space resumes from it
rm -rf "$mnt/r"; fill 1200
"$B/train" "$tmp/cfg.yaml" run.out_dir="$mnt/r" run.steps=6 checkpoint.every=1 \
    checkpoint.keep_last=5 data.val= >"$tmp/out" 2>"$tmp/err"
expect_full "train, later save" "$mnt/r/ckpt/[^ ]*" $?
latest=$(cat "$mnt/r/ckpt/latest" 2>/dev/null)
ok "train, later save: latest names a committed step ($latest)" \
    '[ -n "$latest" ] && [ -f "$mnt/r/ckpt/$latest/COMMITTED" ]'
rm -f "$mnt/fill"
"$B/train" "$tmp/cfg.yaml" run.out_dir="$mnt/r" run.steps=6 checkpoint.every=0 \
    checkpoint.keep_last=1 data.val= >"$tmp/out" 2>"$tmp/err"; rc=$?
ok "train, resume after freeing space: exit 0 (rc $rc): $(tail -n 3 "$tmp/err")" '[ $rc -eq 0 ]'
ok "train, resume: resumed from $latest" 'grep -qi "resum.*${latest#step_}\|resum.*$((10#${latest#step_}))" "$tmp/out" "$tmp/err"'

# export: the weights (~160 KB) do not fit in 60 KB; one line, no "infinite loop closing library"
latest=$(cat "$mnt/r/ckpt/latest" 2>/dev/null)
cp -r "$mnt/r/ckpt/$latest" "$tmp/ck"
rm -rf "$mnt/r"; fill 60
"$B/train" export --ckpt "$tmp/ck" --out "$mnt/w.h5" >"$tmp/out" 2>"$tmp/err"
expect_full "export" "$mnt/w.h5" $? "[12]"  # train export's status for a failed export is main.c's
ok "export: no partial file left" '[ ! -e "$mnt/w.h5" ] && [ ! -e "$mnt/w.h5.tmp" ]'
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
