#!/usr/bin/env bash
# diffusion_cli.sh: `train sample` end to end: a tiny diffusion run, then images from its
# checkpoint for a caption and for a sound file (any rate and channel count, decoded as pack
# does: the same images as from the clip pack stores); sampling is deterministic for a seed and
# differs across seeds and not with --threads; bad options and inputs are one-line errors.
set -u
B=${MM_BUILD:-build}
pass=0; fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
sample() { timeout 120 "$B/train" sample "$@"; }
expect_error() {  # NAME PATTERN ARGS...
    local name=$1 pat=$2; shift 2
    sample "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?
    ok "$name: exit non-zero (got $rc)" '[ $rc -ne 0 ]'
    ok "$name: message matches '$pat': $(head -c 300 "$tmp/err")" 'grep -Eq "^error: .*$pat" "$tmp/err"'
}

"$B/mmdata" synth --out "$tmp/d" --samples 128 --seed 2 >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
common=(data.train="$tmp/d/train" data.global_batch=8 data.micro_batch=8 model.d_model=32
        model.n_layers=1 model.n_heads=2 model.patch=4 diffusion.enc_layers=1 run.steps=3
        run.threads=2 run.log_every=1)
printf 'model:\n  kind: diffusion\n' >"$tmp/c.yaml"
timeout 300 "$B/train" "$tmp/c.yaml" "${common[@]}" run.out_dir="$tmp/run" >"$tmp/train.log" 2>&1
ok "tiny diffusion run: $(tail -n 2 "$tmp/train.log")" '[ $? -eq 0 ] && [ -d "$tmp/run/ckpt/step_00000003" ]'
ck="$tmp/run/ckpt/step_00000003"

sample --ckpt "$ck" --out "$tmp/o1" --text "a small red circle on the left" --n 2 --steps 3 --seed 5 >"$tmp/s1.log" 2>&1
ok "sample with a caption: $(tail -n 1 "$tmp/s1.log")" '[ $? -eq 0 ] && [ -s "$tmp/o1/sample_000.png" ] && [ -s "$tmp/o1/sample_001.png" ] && [ -s "$tmp/o1/grid.png" ]'
sample --ckpt "$ck" --out "$tmp/o2" --text "a small red circle on the left" --n 2 --steps 3 --seed 5 >/dev/null 2>&1
ok "same seed, same images" 'cmp -s "$tmp/o1/sample_000.png" "$tmp/o2/sample_000.png" && cmp -s "$tmp/o1/grid.png" "$tmp/o2/grid.png"'
sample --ckpt "$ck" --out "$tmp/o3" --text "a small red circle on the left" --n 2 --steps 3 --seed 6 >/dev/null 2>&1
ok "another seed, other images" '! cmp -s "$tmp/o1/sample_000.png" "$tmp/o3/sample_000.png"'
sample --ckpt "$ck" --out "$tmp/o4" --n 1 --steps 2 >/dev/null 2>&1
# the thread count changes the speed, never the images
sample --ckpt "$ck" --out "$tmp/t1" --text "a blue square" --n 4 --steps 3 --threads 1 >"$tmp/t1.log" 2>&1
ok "--threads 1: $(tail -n 1 "$tmp/t1.log")" '[ $? -eq 0 ] && grep -q "s, 1 thread$" "$tmp/t1.log"'
sample --ckpt "$ck" --out "$tmp/t2" --text "a blue square" --n 4 --steps 3 --threads 2 >"$tmp/t2.log" 2>&1
ok "--threads 2: $(tail -n 1 "$tmp/t2.log")" '[ $? -eq 0 ] && grep -q "s, 2 threads$" "$tmp/t2.log"'
ok "1 and 2 threads give the same images" 'cmp -s "$tmp/t1/grid.png" "$tmp/t2/grid.png"'
ok "unconditional sample" '[ -s "$tmp/o4/sample_000.png" ]'

if command -v python3 >/dev/null 2>&1; then
    wav() {  # PATH RATE [CHANNELS]: half a second of 880 Hz, 16-bit (channels 0.8 and 0.4 loud)
        python3 - "$1" "$2" "${3:-1}" <<'PY'
import math, struct, sys, wave
path, rate, ch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with wave.open(path, "wb") as w:
    w.setnchannels(ch); w.setsampwidth(2); w.setframerate(rate)
    w.writeframes(b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * 880 * i / rate) / (1 + c)))
                           for i in range(rate // 2) for c in range(ch)))
PY
    }
    wav "$tmp/tone.wav" 8000 && wav "$tmp/tone16k.wav" 16000 && wav "$tmp/st22k.wav" 22050 2
    sample --ckpt "$ck" --out "$tmp/o5" --audio "$tmp/tone.wav" --n 1 --steps 2 >"$tmp/s5.log" 2>&1
    ok "sample with audio: $(tail -n 1 "$tmp/s5.log")" '[ $? -eq 0 ] && [ -s "$tmp/o5/sample_000.png" ]'
    sample --ckpt "$ck" --out "$tmp/o6" --audio "$tmp/tone16k.wav" --n 1 --steps 2 >"$tmp/s6.log" 2>&1
    ok "audio at 16 kHz is resampled to the model's 8 kHz: $(head -n 1 "$tmp/s6.log")" \
        '[ $? -eq 0 ] && grep -q "tone16k.wav: 16000 Hz, 1 channel, 0.500 s -> 4000 samples at 8000 Hz$" "$tmp/s6.log"'
    # a 22.05 kHz stereo clip conditions the model exactly as the clip pack stores for it:
    # sampling from the file and from what `mmdata inspect` writes back gives the same images
    echo '{"audio": "st22k.wav", "caption": "x"}' >"$tmp/one.jsonl"
    "$B/mmdata" pack --manifest "$tmp/one.jsonl" --out "$tmp/p22" --val-fraction 0 --audio-len 4000 \
        --text-max 48 >/dev/null 2>&1 && "$B/mmdata" inspect "$tmp/p22" --sample 0 --out "$tmp/p22look" >/dev/null 2>&1
    ok "pack stores the 22.05 kHz stereo clip" '[ -s "$tmp/p22look/sample_0.wav" ]'
    sample --ckpt "$ck" --out "$tmp/o7" --audio "$tmp/st22k.wav" --n 2 --steps 2 --seed 3 >"$tmp/s7.log" 2>&1
    ok "sample with a 22.05 kHz stereo clip: $(head -n 1 "$tmp/s7.log")" \
        '[ $? -eq 0 ] && grep -q "22050 Hz, 2 channels, 0.500 s -> 4000 samples at 8000 Hz$" "$tmp/s7.log"'
    sample --ckpt "$ck" --out "$tmp/o8" --audio "$tmp/p22look/sample_0.wav" --n 2 --steps 2 --seed 3 >/dev/null 2>&1
    ok "the clip as given and as packed give the same images" 'cmp -s "$tmp/o7/grid.png" "$tmp/o8/grid.png"'
    python3 -c "import random, struct, sys, wave
w = wave.open(sys.argv[1], 'wb'); w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000)
random.seed(1); w.writeframes(b''.join(struct.pack('<h', random.randint(-30000, 30000)) for i in range(4000)))" "$tmp/noise.wav"
    sample --ckpt "$ck" --out "$tmp/o9" --audio "$tmp/noise.wav" --n 2 --steps 2 --seed 3 >/dev/null 2>&1
    ok "loud noise gives other images (the clip is used)" '! cmp -s "$tmp/o7/grid.png" "$tmp/o9/grid.png"'
    printf 'not audio at all' >"$tmp/junk.wav"
    expect_error "audio that is not audio" "--audio .*junk.wav: not a readable audio file" --ckpt "$ck" --out "$tmp/x" --audio "$tmp/junk.wav"
fi

expect_error "no --ckpt" "--ckpt DIR is required" --out "$tmp/x"
expect_error "unknown option" "unknown option '--colour'" --ckpt "$ck" --out "$tmp/x" --colour red
expect_error "bad --n" "--n 'many'" --ckpt "$ck" --out "$tmp/x" --n many
for g in nan inf -1 1e9 ""; do
    expect_error "--guidance '$g'" "--guidance '$g': expected a number in \\[0, 100\\]" --ckpt "$ck" --out "$tmp/x" --guidance "$g"
done
expect_error "empty --seed" "--seed '': expected an unsigned integer" --ckpt "$ck" --out "$tmp/x" --seed ""
expect_error "caption too long" "--text is 60 bytes" --ckpt "$ck" --out "$tmp/x" --text "$(printf 'x%.0s' $(seq 60))"
expect_error "missing audio file" "--audio .*nope.wav: cannot open" --ckpt "$ck" --out "$tmp/x" --audio "$tmp/nope.wav"
expect_error "not a checkpoint" "$tmp/d" --ckpt "$tmp/d" --out "$tmp/x"
expect_error "bad --backend" "--backend 'tpu': expected cpu or cuda" --ckpt "$ck" --out "$tmp/x" --backend tpu
case "$B" in *cuda*) ;; *)
    expect_error "--backend cuda in a CPU build" "built without CUDA" --ckpt "$ck" --out "$tmp/x" --backend cuda ;;
esac
sample --ckpt "$ck" --out "$tmp/o6" --text "a small red circle on the left" --n 2 --steps 3 --seed 5 --backend cpu >/dev/null 2>&1
ok "--backend cpu is the default" 'cmp -s "$tmp/o1/grid.png" "$tmp/o6/grid.png"'
timeout 300 "$B/train" "$tmp/c.yaml" "${common[@]}" model.kind=transformer model.patch=8 run.out_dir="$tmp/lm" >/dev/null 2>&1
expect_error "a transformer checkpoint" "transformer checkpoint; sample needs a diffusion one" --ckpt "$tmp/lm/ckpt/step_00000003" --out "$tmp/x"
# a validation set without images: the diffusion loss cannot be evaluated; it is reported
# absent (n/a, no val_loss key) with one warning, never as a perfect 0
if command -v python3 >/dev/null 2>&1; then
    for i in $(seq 1 40); do echo "{\"caption\": \"a small red circle on the left $i\"}"; done >"$tmp/noimg.jsonl"
    "$B/mmdata" pack --manifest "$tmp/noimg.jsonl" --out "$tmp/noimg" --val-fraction 0.5 \
        --schema-from "$tmp/d" >/dev/null 2>&1  # the training set's shapes
    timeout 300 "$B/train" "$tmp/c.yaml" "${common[@]}" data.val="$tmp/noimg/val" eval.every=3 \
        eval.samples=8 diffusion.eval_samples=2 run.out_dir="$tmp/noimgrun" >"$tmp/ni.out" 2>"$tmp/ni.err"
    ok "val set without images: run exits 0: $(tail -n 2 "$tmp/ni.err")" '[ $? -eq 0 ]'
    ok "val set without images: 'val_loss n/a', no 0.0000: $(grep "^eval step" "$tmp/ni.out")" \
        'grep -q "^eval step 3 | val_loss n/a |" "$tmp/ni.out" && ! grep -q "val_loss 0.0000" "$tmp/ni.out"'
    ok "val set without images: one warning naming the set" \
        '[ "$(grep -c "^warning: .*noimg/val.*no.*image.*val_loss n/a" "$tmp/ni.err")" -eq 1 ]'
    ok "val set without images: metrics.jsonl has no val_loss" \
        'grep -q "\"step\":3,\"cond_acc\"" "$tmp/noimgrun/metrics.jsonl" && ! grep -q val_loss "$tmp/noimgrun/metrics.jsonl"'
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
