#!/usr/bin/env bash
# tensorboard.sh: the TensorBoard event files (train/tboard.h, issue 18 item 1), read back by
# the tensorboard package's own reader (EventAccumulator, as `tensorboard --logdir` loads
# them): every scalar of metrics.jsonl with the same tag, step and value (float32), each step
# once after a kill and a resume (with a record the kill cut short), the diffusion sample
# grids as images (the PNG bytes the run wrote), the generated captions as text; off with
# run.tensorboard ""; an unwritable directory and a full disk are one-line errors.
# Installs the tensorboard package with pip when it is missing (as root); prints "skipped"
# with a zero count when it cannot.
set -u
B=${MM_BUILD:-build}
pass=0; fail=0
tmp=$(mktemp -d)
cleanup() { umount "$tmp/mnt" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
has_tb() { python3 -c "import tensorboard.backend.event_processing.event_accumulator" 2>/dev/null; }
if ! has_tb && [ "$(id -u)" -eq 0 ]; then
    python3 -m pip install --quiet tensorboard >"$tmp/pip.log" 2>&1
fi
if ! has_tb; then
    echo "skipped: the tensorboard Python package is not installed and pip could not install it" \
         "($(tail -n 1 "$tmp/pip.log" 2>/dev/null))"
    echo "0 passed, 0 failed"; exit 0
fi

# check.py RUN_DIR [KILLED_AT]: the event files of RUN_DIR/tb against RUN_DIR/metrics.jsonl;
# prints what it found, one line per problem, and exits 1 on any
cat >"$tmp/check.py" <<'PY'
import glob, json, os, re, struct, sys, warnings
warnings.filterwarnings("ignore")
import numpy as np
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import event_file_loader
run = sys.argv[1]
bad = []
files = sorted(glob.glob(os.path.join(run, "tb", "*tfevents*")))
if len(files) != 1: bad.append(f"{len(files)} event files, want 1")
first = next(event_file_loader.EventFileLoader(files[0]).Load())
if first.file_version != "brain.Event:2": bad.append(f"first event: {first}")
# purge_orphaned_data off: a step written twice shows twice instead of being hidden
acc = ea.EventAccumulator(os.path.join(run, "tb"), purge_orphaned_data=False,
                          size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0})
acc.Reload()
want = {}  # (tag, step) -> value
for line in open(os.path.join(run, "metrics.jsonl")):
    o = json.loads(line)
    for k, v in o.items():
        if k == "step" or v is None: continue
        if (k, o["step"]) in want: bad.append(f"metrics.jsonl has {k} at step {o['step']} twice")
        want[(k, o["step"])] = v
got = {}
for tag in acc.Tags()["scalars"]:
    for e in acc.Scalars(tag):
        if (tag, e.step) in got: bad.append(f"scalar {tag} at step {e.step} twice")
        got[(tag, e.step)] = e.value
if set(got) != set(want):
    bad.append(f"tags/steps differ: only in TB {sorted(set(got) - set(want))[:5]}, "
               f"only in metrics.jsonl {sorted(set(want) - set(got))[:5]}")
off = [(k, want[k], got[k]) for k in set(got) & set(want) if np.float32(want[k]) != np.float32(got[k])]
if off: bad.append(f"{len(off)} values differ, e.g. {off[:3]}")
steps = sorted({s for _, s in want})
tags = acc.Tags()
# captions: at each evaluation that generated some (the transformer's), once, naming the
# first evaluated reference
for path in sorted(glob.glob(os.path.join(run, "eval", "step_*.jsonl"))):
    step = int(re.search(r"step_(\d+)", path).group(1))
    o = json.loads(open(path).readline())
    if "generated" not in o: continue
    ref = o["reference"]
    texts = [t for t in acc.Tensors("captions") if t.step == step] if "captions" in tags["tensors"] else []
    if len(texts) != 1:
        bad.append(f"captions at step {step}: {len(texts)} events"); continue
    md = texts[0].tensor_proto.string_val[0].decode()
    plain = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", md)  # Markdown's backslash escapes undone
    if "| reference | generated |" not in md or ref not in plain:
        bad.append(f"captions at step {step} lack '{ref}': {md[:200]!r}")
    if acc.SummaryMetadata("captions").plugin_data.plugin_name != "text":
        bad.append("captions are not the text plugin's")
# sample grids: at each grid the run wrote, once, the same PNG bytes, with its size
for path in sorted(glob.glob(os.path.join(run, "samples", "step_*.png"))):
    step = int(re.search(r"step_(\d+)", path).group(1))
    ims = [i for i in acc.Images("samples") if i.step == step] if "samples" in tags["images"] else []
    if len(ims) != 1:
        bad.append(f"image at step {step}: {len(ims)} events"); continue
    png = open(path, "rb").read()
    w, h = struct.unpack(">II", png[16:24])
    if ims[0].encoded_image_string != png or (ims[0].width, ims[0].height) != (w, h):
        bad.append(f"image at step {step}: not {path} ({ims[0].width}x{ims[0].height})")
    try:
        import io
        from PIL import Image
        if Image.open(io.BytesIO(ims[0].encoded_image_string)).size != (w, h): bad.append("PIL size")
    except ImportError:
        pass
print(f"{len(files)} file, {len(got)} scalars, {len(tags['scalars'])} tags, steps {steps[:1]}..{steps[-1:]}, "
      f"{len(tags['tensors'])} text tags, {len(tags['images'])} image tags")
for b in bad: print("BAD:", b)
sys.exit(1 if bad else 0)
PY
# steps_in RUN_DIR: the steps of the loss scalar in the event file, as the raw loader sees them
steps_in() {
    python3 - "$1" <<'PY' 2>/dev/null
import glob, sys, warnings
warnings.filterwarnings("ignore")
from tensorboard.backend.event_processing import event_file_loader
out = []
for f in sorted(glob.glob(sys.argv[1] + "/tb/*tfevents*")):
    for e in event_file_loader.EventFileLoader(f).Load():
        out += [e.step for v in e.summary.value if v.tag == "loss"]
print(" ".join(map(str, out)))
PY
}

"$B/mmdata" synth --out "$tmp/d" --samples 64 --seed 5 >/dev/null || { echo "synth failed"; echo "0 passed, 1 failed"; exit 1; }
lm=(data.train="$tmp/d/train" data.val="$tmp/d/val" data.global_batch=4 data.micro_batch=2
    model.d_model=32 model.n_layers=1 model.n_heads=2 run.steps=8 run.threads=1 run.log_every=1
    eval.every=2 eval.samples=16 eval.batch=8 checkpoint.every=2)
: >"$tmp/c.yaml"

# the transformer, killed in step 6 (after the checkpoint of step 4), then resumed to step 8
MM_TEST_FAIL=exit:0:6 timeout 120 "$B/train" "$tmp/c.yaml" "${lm[@]}" run.out_dir="$tmp/lm" \
    >"$tmp/lm1.log" 2>&1; rc=$?
ok "killed run exits 3 ($rc)" '[ $rc -eq 3 ]'
before=$(steps_in "$tmp/lm")
ok "before resume the file holds steps 1..5 ($before)" '[ "$before" = "1 2 3 4 5" ]'
ev=$(ls "$tmp"/lm/tb/*tfevents* 2>/dev/null | head -n 1)
head -c 20 "$ev" >>"$ev"  # and the start of a record the kill cut short
timeout 120 "$B/train" "$tmp/c.yaml" "${lm[@]}" run.out_dir="$tmp/lm" >"$tmp/lm2.log" 2>&1; rc=$?
ok "resumed run exits 0: $(tail -n 1 "$tmp/lm2.log")" '[ $rc -eq 0 ] && grep -q "resumed from" "$tmp/lm2.log"'
after=$(steps_in "$tmp/lm")
ok "after resume each step once ($after)" '[ "$after" = "1 2 3 4 5 6 7 8" ]'
python3 "$tmp/check.py" "$tmp/lm" >"$tmp/py" 2>&1; rc=$?
ok "transformer: scalars = metrics.jsonl, captions as text: $(cat "$tmp/py")" '[ $rc -eq 0 ]'
echo "transformer: $(head -n 1 "$tmp/py")"

# the diffusion model on 2 ranks (rank 0 writes): sample grids at each evaluation
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
mpi=(); command -v mpirun >/dev/null && mpi=(mpirun "${root[@]}" --oversubscribe -np 2)
timeout 120 "${mpi[@]}" "$B/train" "$tmp/c.yaml" "${lm[@]}" model.kind=diffusion model.patch=4 \
    diffusion.enc_layers=1 data.global_batch=8 data.micro_batch=4 run.steps=4 \
    diffusion.eval_samples=4 diffusion.sample_steps=2 run.out_dir="$tmp/dit" >"$tmp/dit.log" 2>&1; rc=$?
ok "diffusion run exits 0: $(tail -n 1 "$tmp/dit.log")" '[ $rc -eq 0 ] && [ -s "$tmp/dit/samples/step_00000004.png" ]'
python3 "$tmp/check.py" "$tmp/dit" >"$tmp/py" 2>&1; rc=$?
ok "diffusion: scalars = metrics.jsonl, grids as images: $(cat "$tmp/py")" '[ $rc -eq 0 ]'
echo "diffusion: $(head -n 1 "$tmp/py")"

# run.tensorboard: "" writes none (and a resume with it on gets the steps before); an
# absolute path is used as it is
timeout 120 "$B/train" "$tmp/c.yaml" "${lm[@]}" run.steps=4 run.stop_after=2 data.val= \
    run.tensorboard= run.out_dir="$tmp/off" >"$tmp/off.log" 2>&1; rc=$?
ok "run.tensorboard \"\": no event file" '[ $rc -eq 0 ] && [ ! -e "$tmp/off/tb" ] && ! ls -R "$tmp/off" | grep -q tfevents'
timeout 120 "$B/train" "$tmp/c.yaml" "${lm[@]}" run.steps=4 data.val= run.out_dir="$tmp/off" \
    >"$tmp/on.log" 2>&1; rc=$?
ok "resumed with it on: steps 1..4 ($(steps_in "$tmp/off"))" '[ $rc -eq 0 ] && [ "$(steps_in "$tmp/off")" = "1 2 3 4" ]'
timeout 120 "$B/train" "$tmp/c.yaml" "${lm[@]}" run.steps=2 data.val= run.tensorboard="$tmp/abs/tb" \
    run.out_dir="$tmp/abs/run" >"$tmp/abs.log" 2>&1; rc=$?
ok "run.tensorboard absolute: steps 1 2 there, none in the run directory" \
    '[ $rc -eq 0 ] && [ "$(steps_in "$tmp/abs")" = "1 2" ] && [ ! -e "$tmp/abs/run/tb" ]'

# errors: a directory under a file; a full disk during the run
: >"$tmp/file"
timeout 60 "$B/train" "$tmp/c.yaml" "${lm[@]}" run.steps=2 run.tensorboard="$tmp/file/tb" \
    run.out_dir="$tmp/bad" >"$tmp/out" 2>"$tmp/err"; rc=$?
ok "unwritable run.tensorboard: exit non-zero ($rc), one line naming it: $(cat "$tmp/err")" \
    '[ $rc -ne 0 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "^error: run.tensorboard: $tmp/file/tb: " "$tmp/err"'
mkdir -p "$tmp/mnt"
if mount -t tmpfs -o size=4k tmpfs "$tmp/mnt" 2>/dev/null; then
    # one page: the file_version record and some 20 steps fit, then the disk is full
    timeout 120 "$B/train" "$tmp/c.yaml" "${lm[@]}" run.steps=60 data.val= checkpoint.every=0 \
        run.tensorboard="$tmp/mnt/tb" run.out_dir="$tmp/full" >"$tmp/out" 2>"$tmp/err"; rc=$?
    ok "full disk: exit 1 ($rc), one line naming the event file: $(head -c 300 "$tmp/err")" \
        '[ $rc -eq 1 ] && [ "$(grep -c "^error: " "$tmp/err")" -eq 1 ] && grep -Eq "^error: $tmp/mnt/tb/events\.out\.tfevents\.[^ ]*: cannot write: .*disk full" "$tmp/err"'
else
    echo "note: cannot mount a tmpfs (not root?): the full-disk case is not run"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
