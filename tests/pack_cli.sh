#!/usr/bin/env bash
# pack_cli.sh: `mmdata pack` and `mmdata inspect` the way a user meets them: a folder of real
# files (images from test_pack --fixtures, WAV/FLAC made by sox at 8000, 22050, 44100 and
# 16000 Hz, stereo, sines of known pitch, captions inline and in .txt files) packed from a
# JSONL and a CSV manifest; inspect writes samples back out and the checks are made on those
# files: the pitch survives resampling (zero crossings counted by awk on sox's text dump),
# captions come back byte for byte, a PNG of the right size comes back (byte-exact when no
# resizing was needed); verify accepts the dataset; the trainer runs 5 steps on it; the
# bytes do not depend on --threads. Then every kind of bad sample: in fail mode one error
# line with manifest:line, the path and the reason, a non-zero exit and no output folder;
# in skip mode each listed in skipped.tsv. Ends with "N passed, N failed".
set -u
B=${MM_BUILD:-build}
MMDATA="$B/mmdata"
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0

run() {  # CMD...: status in $rc, stdout in $tmp/out, stderr in $tmp/err
    "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}
expect() {  # description, condition...
    local what=$1
    shift
    if "$@"; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        echo "FAIL: $what (rc=$rc)"
        sed 's/^/    stdout| /' "$tmp/out" | head -5
        sed 's/^/    stderr| /' "$tmp/err" | head -5
    fi
}
one_line_error() {  # stderr is one "error:" line holding every argument
    [ "$(wc -l <"$tmp/err")" -eq 1 ] && head -n 1 "$tmp/err" | grep -q '^error: ' || return 1
    local s
    for s in "$@"; do grep -qF -- "$s" "$tmp/err" || return 1; done
}
# dominant frequency of a WAV: sign changes of its samples (sox's text dump) / 2 / duration
freq_of() {
    sox "$1" -t dat - | awk '
        /^;/ { if ($0 ~ /Sample Rate/) rate = $4; next }
        { v = $2 + 0; n++; if (n > 1 && ((v < 0) != (pv < 0))) c++; pv = v }
        END { if (n == 0 || rate == 0) print 0; else printf "%.1f\n", c / 2 / (n / rate) }'
}
near() {  # value, target, relative tolerance
    awk -v v="$1" -v t="$2" -v r="$3" 'BEGIN { d = v - t; if (d < 0) d = -d; exit !(d <= r * t) }'
}
png_size() {  # "WxH" from the IHDR of a PNG
    od -An -tu1 -j16 -N8 "$1" | awk '{ printf "%dx%d\n", $1*16777216+$2*65536+$3*256+$4, $5*16777216+$6*65536+$7*256+$8 }'
}
no_output_left() {  # the output folder and any temporary folder beside it are gone
    [ ! -e "$1" ] && [ -z "$(ls -d "$1".packing-* 2>/dev/null)" ]
}

if [ ! -x "$MMDATA" ] || [ ! -x "$B/tests/test_pack" ] || ! command -v sox >/dev/null; then
    echo "FAIL: needs $MMDATA, $B/tests/test_pack and sox"
    echo "0 passed, 1 failed"
    exit 1
fi

# ---- the user's folder --------------------------------------------------------------------
src="$tmp/src"
mkdir -p "$src/caps" "$src/snd"
"$B/tests/test_pack" --fixtures "$src" || { echo "FAIL: fixtures"; echo "0 passed, 1 failed"; exit 1; }
sox -n -r 8000 -c 2 -b 16 "$src/snd/a8k.wav" synth 0.4 sine 440 vol 0.5
sox -n -r 22050 -c 2 -b 16 "$src/snd/a22k.wav" synth 0.5 sine 660 vol 0.5
sox -n -r 44100 -c 2 -b 16 "$src/snd/a44k.wav" synth 1.0 sine 523 vol 0.5
sox -n -r 16000 -c 1 -b 16 "$src/snd/a16k.flac" synth 0.3 sine 1000 vol 0.5
printf 'a red circle on the left' >"$src/caps/c1.txt"
printf 'na\xc3\xafve caf\xc3\xa9 \xe2\x80\x94 \xe4\xb8\xad\xe6\x96\x87\n' >"$src/caps/c2.txt"  # final newline dropped
utf8_inline=$(printf 'caf\xc3\xa9 \xf0\x9f\x98\x80 "quoted"')
cat >"$src/m.jsonl" <<'EOF'
{"image": "rgb32.png", "audio": "snd/a8k.wav", "caption_file": "caps/c1.txt"}
{"image": "photo.jpg", "audio": "snd/a22k.wav", "caption": "caf\u00e9 \ud83d\ude00 \"quoted\""}
{"image": "grey16.png", "audio": "snd/a44k.wav", "caption_file": "caps/c2.txt"}
{"image": "ga.png", "caption": "grey and alpha"}

{"image": "rgba.png", "audio": "snd/a16k.flac", "caption": "rgba and flac"}
{"audio": "snd/a44k.wav", "caption": "audio only"}
{"image": "rgb32.png", "caption": "image seven"}
{"image": "photo.jpg", "audio": "snd/a8k.wav", "caption": "eight"}
{"image": "rgba.png", "audio": "snd/a22k.wav", "caption": "nine"}
{"image": "ga.png", "audio": "snd/a16k.flac", "caption": "ten"}
{"image": "grey16.png", "caption": "eleven"}
{"image": "rgb32.png", "audio": "snd/a44k.wav", "caption": "twelve"}
EOF

# ---- pack (no val: positions follow the manifest) and look inside --------------------------
run "$MMDATA" pack --manifest "$src/m.jsonl" --out "$tmp/ds" --val-fraction 0 --threads 3
expect "pack jsonl succeeds" test "$rc" -eq 0
expect "summary counts 12 of 12 samples" grep -q "packed 12 of 12 samples: train 12 in 1 shard" "$tmp/out"
expect "caption limit from the data: the longest caption" grep -q "^captions: longest 24 bytes; text_max 24 (from the data" "$tmp/out"
expect "clip lengths reported with what each length would cut" \
    grep -q "^audio: 9 clips at 8000 Hz, by length.*p50 4000 samples (0.500 s, 3 longer), p90 8000 samples (1.000 s, 0 longer).*p100 8000 samples (1.000 s, 0 longer)$" "$tmp/out"
expect "audio_len from the data: the longest clip rounded up to 128, frames said" \
    grep -q "^audio: audio_len 8064 (1.008 s, 62 log-mel frames at the default data.n_fft 256, data.hop 128): the longest clip" "$tmp/out"
expect "no clip cut" grep -vq "cut to it" "$tmp/out"
expect "no progress bar when stderr is not a terminal" test ! -s "$tmp/err"
run "$MMDATA" verify "$tmp/ds/train"
expect "verify accepts the packed dataset" grep -q "ok: 12 samples in 1 shard; images 32x32x3 (11 present), audio 8000 Hz x 8064 (9 present), captions <= 24 bytes" "$tmp/out"
run "$MMDATA" inspect "$tmp/ds"
expect "inspect succeeds" test "$rc" -eq 0
expect "inspect prints the schema" grep -q "schema: image 32x32x3 uint8, audio 8000 Hz x 8064 samples" "$tmp/out"
expect "inspect counts modalities" grep -q "image 11 (91.7%), audio 9 (75.0%)" "$tmp/out"
expect "inspect lists the shard" grep -q "shard_00000.h5: 12 samples from position 0" "$tmp/out"

o="$tmp/look"
run "$MMDATA" inspect "$tmp/ds" --sample 0 --out "$o"
expect "inspect --sample 0" test "$rc" -eq 0
expect "sample 0: sample_id is its manifest line" grep -q "sample_id 1 " "$tmp/out"
expect "32x32 RGB PNG comes back byte for byte" cmp -s "$o/sample_0.png" "$src/rgb32.png"
expect "caption file comes back byte for byte" cmp -s "$o/sample_0.txt" "$src/caps/c1.txt"
f=$(freq_of "$o/sample_0.wav")
expect "8000 Hz stereo 440 Hz: pitch kept ($f Hz)" near "$f" 440 0.02
expect "8000 Hz clip of 0.4 s: 3200 samples" grep -q "3200 samples at 8000 Hz" "$tmp/out"

run "$MMDATA" inspect "$tmp/ds" --sample 1 --out "$o"
expect "inline caption with escapes comes back byte for byte" test "$(cat "$o/sample_1.txt")" = "$utf8_inline"
f=$(freq_of "$o/sample_1.wav")
expect "22050 Hz stereo 660 Hz resampled to 8000: pitch kept ($f Hz)" near "$f" 660 0.02
expect "22050 Hz clip of 0.5 s: 4000 samples" grep -q "4000 samples at 8000 Hz" "$tmp/out"
expect "JPEG 100x60 comes back as a 32x32 PNG" test "$(png_size "$o/sample_1.png")" = 32x32

run "$MMDATA" inspect "$tmp/ds" --sample 2 --out "$o"
expect "caption file loses only its final newline" test "$(od -An -tx1 "$o/sample_2.txt" | tr -d ' \n')" = "$(printf 'na\xc3\xafve caf\xc3\xa9 \xe2\x80\x94 \xe4\xb8\xad\xe6\x96\x87' | od -An -tx1 | tr -d ' \n')"
f=$(freq_of "$o/sample_2.wav")
expect "44100 Hz stereo 523 Hz resampled to 8000: pitch kept ($f Hz)" near "$f" 523 0.02
expect "a 1 s clip is kept whole" grep -q "8000 samples at 8000 Hz" "$tmp/out"
expect "16-bit grey PNG 40x40 comes back as 32x32" test "$(png_size "$o/sample_2.png")" = 32x32

run "$MMDATA" inspect "$tmp/ds" --sample 4 --out "$o"
f=$(freq_of "$o/sample_4.wav")
expect "16000 Hz FLAC 1000 Hz resampled to 8000: pitch kept ($f Hz)" near "$f" 1000 0.02
expect "FLAC clip of 0.3 s: 2400 samples" grep -q "2400 samples at 8000 Hz" "$tmp/out"
expect "sample 4 is manifest line 6 (blank line 5 is no sample)" grep -q "sample_id 6 " "$tmp/out"

run "$MMDATA" inspect "$tmp/ds" --sample 3 --out "$o"
expect "a sample without audio says so and writes no WAV" test "$rc" -eq 0 -a ! -e "$o/sample_3.wav"
expect "no audio reported" grep -q "audio: none" "$tmp/out"
run "$MMDATA" inspect "$tmp/ds" --sample 12 --out "$o"
expect "inspect of a position past the end fails in one line" one_line_error "out of range"

# ---- the same samples from a CSV manifest -------------------------------------------------
{
    echo 'image,audio,caption,caption_file'
    echo 'rgb32.png,snd/a8k.wav,,caps/c1.txt'
    echo 'photo.jpg,snd/a22k.wav,"a caption, with a comma and ""quotes""",'
    echo 'ga.png,,"two'
    echo 'lines",'
    echo ',snd/a44k.wav,audio only,'
} >"$src/m.csv"
run "$MMDATA" pack --manifest "$src/m.csv" --out "$tmp/dcsv" --val-fraction 0
expect "pack csv succeeds" grep -q "packed 4 of 4 samples" "$tmp/out"
run "$MMDATA" inspect "$tmp/dcsv" --sample 1 --out "$tmp/lc"
expect "CSV quoted caption comes back" test "$(cat "$tmp/lc/sample_1.txt")" = 'a caption, with a comma and "quotes"'
run "$MMDATA" inspect "$tmp/dcsv" --sample 2 --out "$tmp/lc"
expect "CSV caption across two lines comes back" test "$(cat "$tmp/lc/sample_2.txt")" = "$(printf 'two\nlines')"
expect "a record across lines is named by its first line" grep -q "sample_id 4 " "$tmp/out"
run "$MMDATA" inspect "$tmp/dcsv" --sample 0 --out "$tmp/lc"
expect "CSV image comes back byte for byte" cmp -s "$tmp/lc/sample_0.png" "$src/rgb32.png"

# ---- splits, determinism across threads, training ----------------------------------------
run "$MMDATA" pack --manifest "$src/m.jsonl" --out "$tmp/t1" --val-fraction 0.25 --threads 1 --shard-size 4
expect "pack with a val split" grep -q "packed 12 of 12 samples: train 9 in 3 shards, val 3 in 1 shard" "$tmp/out"
run "$MMDATA" pack --manifest "$src/m.jsonl" --out "$tmp/t4/" --val-fraction 0.25 --threads 4 --shard-size 4
expect "pack with 4 threads (out given with a trailing /)" test "$rc" -eq 0 -a -f "$tmp/t4/train/index.json"
same=1
for f in train/index.json train/shard_00000.h5 train/shard_00001.h5 train/shard_00002.h5 val/index.json val/shard_00000.h5; do
    cmp -s "$tmp/t1/$f" "$tmp/t4/$f" || same=0
done
expect "1 and 4 threads write the same bytes" test "$same" -eq 1
run "$MMDATA" verify "$tmp/t1/val"
expect "verify accepts the val split" grep -q "ok: 3 samples" "$tmp/out"
run "$MMDATA" pack --manifest "$src/m.jsonl" --out "$tmp/t5" --val-fraction 0.25 --seed 7 --shard-size 4
expect "another seed, another split" test "$(cmp -s "$tmp/t1/val/shard_00000.h5" "$tmp/t5/val/shard_00000.h5"; echo $?)" -ne 0

launch=()  # one rank through mpirun like the other CLI tests; plain when the build has no MPI
if command -v mpirun >/dev/null; then
    launch=(mpirun --oversubscribe -np 1)
    [ "$(id -u)" -ne 0 ] || launch=(mpirun --allow-run-as-root --oversubscribe -np 1)
fi
timeout 300 "${launch[@]}" "$B/train" "$root/configs/tiny.yaml" \
    run.out_dir="$tmp/run" run.steps=5 run.threads=1 data.train="$tmp/t1/train" data.val="$tmp/t1/val" \
    data.global_batch=4 data.micro_batch=2 model.d_model=32 model.n_layers=1 model.n_heads=2 \
    eval.samples=3 eval.batch=3 >"$tmp/out" 2>"$tmp/err"
rc=$?
expect "train configs/tiny.yaml runs 5 steps on the packed set" test "$rc" -eq 0
expect "5 steps logged" test "$(grep -c '"loss"' "$tmp/run/metrics.jsonl" 2>/dev/null)" = 5

# ---- bad input, fail mode: one line naming manifest:line, path, reason; nothing left --------
m="$src/bad.jsonl"
bad_case() {  # name, second manifest line, expected strings...
    local name=$1 line=$2
    shift 2
    printf '%s\n%s\n' '{"image": "rgb32.png", "caption": "good"}' "$line" >"$m"
    rm -rf "$tmp/bad"  # a failed check above must not fail every case after it
    run "$MMDATA" pack --manifest "$m" --out "$tmp/bad" --text-max 48
    expect "$name: exit 1" test "$rc" -eq 1
    expect "$name: one error line with $m:2 and '$*'" one_line_error "$m:2" "$@"
    expect "$name: no output folder left" no_output_left "$tmp/bad"
}
cp "$src/photo.jpg" "$src/cut.jpg"
truncate -s $(($(wc -c <"$src/photo.jpg") / 2)) "$src/cut.jpg"
cp "$src/rgba.png" "$src/cut.png"
truncate -s $(($(wc -c <"$src/rgba.png") / 2)) "$src/cut.png"
printf 'this is not an image\n' >"$src/text.png"
printf 'RIFF0000WAVEjunk' >"$src/junk.wav"
: >"$src/empty.wav"
printf 'bad \xed\xa0\x80 surrogate' >"$src/caps/sur.txt"
printf '%s' "this caption is much longer than the forty-eight bytes allowed" >"$src/caps/long.txt"
bad_case "missing image" '{"image": "nope.png"}' "$src/nope.png" "cannot open: No such file"
bad_case "image that is text" '{"image": "text.png"}' "$src/text.png" "not a PNG or JPEG"
bad_case "truncated PNG" '{"image": "cut.png"}' "$src/cut.png" "not a readable PNG"
bad_case "truncated JPEG" '{"image": "cut.jpg"}' "$src/cut.jpg" "not a readable JPEG"
bad_case "missing audio" '{"audio": "snd/none.wav"}' "$src/snd/none.wav" "cannot open"
bad_case "corrupt audio" '{"audio": "junk.wav"}' "$src/junk.wav" "not a readable audio file"
bad_case "zero-length audio" '{"audio": "zero.wav"}' "$src/zero.wav" "no samples"
bad_case "empty audio file" '{"audio": "empty.wav"}' "$src/empty.wav" "file is empty"
bad_case "caption file with a surrogate" '{"caption_file": "caps/sur.txt"}' "$src/caps/sur.txt" "not valid UTF-8: byte 4: UTF-16 surrogate"
bad_case "caption file too long" '{"caption_file": "caps/long.txt"}' "$src/caps/long.txt" "longer than text_max 48"
bad_case "inline caption overlong UTF-8" "$(printf '{"caption": "x\xc0\xaf"}')" ": caption: not valid UTF-8: byte 1: overlong encoding"
bad_case "line that does not parse" '{"image": "rgb32.png", "caption": 5}' "$m:2:35:" "must be a string or null"
bad_case "unknown key" '{"imgae": "rgb32.png"}' "$m:2:2:" "unknown key 'imgae'"
bad_case "empty sample" '{}' "empty sample: no image, audio or caption"
bad_case "empty caption only" '{"caption": ""}' "empty sample"

printf 'image,caption\nrgb32.png,ok\nrgb32.png,bad"quote\n' >"$src/bad.csv"
run "$MMDATA" pack --manifest "$src/bad.csv" --out "$tmp/bad"
expect "CSV with a stray quote: line and column" one_line_error "$src/bad.csv:3:14:" "unquoted field"
expect "CSV with a stray quote: nothing left" no_output_left "$tmp/bad"
printf 'image,colour\nrgb32.png,red\n' >"$src/badhead.csv"
run "$MMDATA" pack --manifest "$src/badhead.csv" --out "$tmp/bad"
expect "CSV with an unknown column fails" one_line_error "badhead.csv:1: header: column 2 'colour' is unknown"

# ---- skip mode: every bad sample listed, the rest packed ----------------------------------
{
    echo '{"image": "rgb32.png", "caption": "good one"}'
    echo '{"image": "nope.png"}'
    echo '{"image": "text.png", "caption": "x"}'
    echo '{"audio": "zero.wav"}'
    echo '{"caption_file": "caps/sur.txt"}'
    echo '{"image": "rgb32.png", "caption": 5}'
    echo '{}'
    echo '{"audio": "snd/a8k.wav", "caption": "good two"}'
    echo '{"image": "photo.jpg", "caption": "good three"}'
    echo '{"audio": "junk.wav"}'
} >"$src/mixed.jsonl"
run "$MMDATA" pack --manifest "$src/mixed.jsonl" --out "$tmp/skip" --on-error skip --val-fraction 0
expect "skip mode succeeds" test "$rc" -eq 0
expect "skip mode: summary says 3 packed, 7 skipped" grep -q "packed 3 of 10 samples.*skipped 7 (listed in $tmp/skip/skipped.tsv)" "$tmp/out"
expect "skip mode: a warning per skipped sample" test "$(grep -c '^warning: skipped: ' "$tmp/err")" -eq 7
r="$tmp/skip/skipped.tsv"
expect "skipped.tsv has a header and 7 rows" test "$(wc -l <"$r")" -eq 8
for want in "2	$src/nope.png	cannot open" "3	$src/text.png	not a PNG or JPEG" \
    "4	$src/zero.wav	audio has no samples" "5	$src/caps/sur.txt	not valid UTF-8" \
    "6		column 35: the value of 'caption' must be a string" "7		empty sample" \
    "10	$src/junk.wav	not a readable audio file"; do
    expect "skipped.tsv lists '$want'" grep -qF -- "$want" "$r"
done
run "$MMDATA" verify "$tmp/skip/train"
expect "the skip-mode dataset verifies with 3 samples" grep -q "ok: 3 samples" "$tmp/out"
run "$MMDATA" inspect "$tmp/skip"
expect "inspect mentions the skipped samples" grep -q "skipped when packing: 7 samples" "$tmp/out"

{
    echo '{"image": "nope.png"}'
    echo '{"image": "text.png"}'
} >"$src/allbad.jsonl"
run "$MMDATA" pack --manifest "$src/allbad.jsonl" --out "$tmp/allbad" --on-error skip --val-fraction 0
expect "skip mode with nothing left: exit 1" test "$rc" -eq 1
expect "skip mode with nothing left: warnings, then one error line" \
    test "$(grep -c '^error: ' "$tmp/err")" -eq 1 -a "$(grep -c '^warning: skipped: ' "$tmp/err")" -eq 2
expect "skip mode with nothing left: the error says why" grep -q '^error: .*no training sample is left: all 2' "$tmp/err"
expect "skip mode with nothing left: no output" no_output_left "$tmp/allbad"

# ---- command line -------------------------------------------------------------------------
run "$MMDATA" pack --out "$tmp/x"
expect "pack without --manifest: exit 2" test "$rc" -eq 2
expect "pack without --manifest: one line" one_line_error "missing --manifest"
run "$MMDATA" pack --manifest "$src/m.jsonl" --out "$tmp/x" --on-error maybe
expect "bad --on-error: exit 2" test "$rc" -eq 2
run "$MMDATA" pack --manifest "$src/m.jsonl" --out "$tmp/x" --val-fraction 1
expect "--val-fraction 1: exit 2" test "$rc" -eq 2
run "$MMDATA" pack --manifest "$src/m.jsonl" --out "$tmp/x" --image-size 0
expect "--image-size 0: exit 2" test "$rc" -eq 2
run "$MMDATA" pack --manifest "$src/m.jsonl" --out "$tmp/x" --channels 2
expect "--channels 2: exit 2" test "$rc" -eq 2
run "$MMDATA" pack --manifest "$src/m.jsonl" --out "$tmp/x" --colour red
expect "unknown option: one line" one_line_error "unknown option '--colour'"
expect "nothing written after bad command lines" no_output_left "$tmp/x"
run "$MMDATA" pack --manifest "$src/m.jsonl" --out "$tmp/ds"
expect "pack refuses a used folder" one_line_error "$tmp/ds: directory is not empty"
run "$MMDATA" pack --manifest "$src/none.jsonl" --out "$tmp/x"
expect "missing manifest: one line naming it" one_line_error "$src/none.jsonl: cannot open"
run "$MMDATA" inspect "$tmp/nothing"
expect "inspect of a non-dataset fails in one line" one_line_error "not a dataset"
run "$MMDATA" inspect "$tmp/ds" --sample 0
expect "inspect --sample without --out: exit 2" test "$rc" -eq 2

# a grey 24x16 schema and a custom rate: the schema options reach the dataset
run "$MMDATA" pack --manifest "$src/m.jsonl" --out "$tmp/g" --image-size 16x24 --channels 1 --audio-rate 16000 --audio-len 8000 --text-max 64 --val-fraction 0
expect "custom schema packs" test "$rc" -eq 0
run "$MMDATA" inspect "$tmp/g" --sample 1 --out "$tmp/lg"
expect "custom schema: image 16x24x1" grep -q "image: .* (16x24x1)" "$tmp/out"
expect "custom schema: PNG is 24 wide, 16 high" test "$(png_size "$tmp/lg/sample_1.png")" = 24x16
f=$(freq_of "$tmp/lg/sample_1.wav")
expect "custom schema: 660 Hz at 16 kHz ($f Hz)" near "$f" 660 0.02
expect "custom schema: 0.5 s is 8000 samples at 16 kHz" grep -q "8000 samples at 16000 Hz" "$tmp/out"


# Issue 16, items 13 and 16: a FIFO as an image or audio path is refused at once (pack used to
# wait forever for a writer), and duplicated manifest lines are refused, or skipped and
# counted, never packed twice (val could hold copies of training samples).
mkdir -p "$tmp/dupsrc"
"$B/tests/test_pack" --fixtures "$tmp/dupsrc" >/dev/null 2>&1
mkfifo "$tmp/dupsrc/pipe.png" "$tmp/dupsrc/pipe.wav"
for f in pipe.png pipe.wav; do
    key=image; [ "$f" = pipe.wav ] && key=audio
    printf '{"%s": "%s", "caption": "x"}\n' "$key" "$f" >"$tmp/dupsrc/fifo.jsonl"
    run timeout 20 "$MMDATA" pack --manifest "$tmp/dupsrc/fifo.jsonl" --out "$tmp/fifo_$key" --val-fraction 0
    expect "FIFO as $key: exit 1 at once (not a hang)" test "$rc" -eq 1
    expect "FIFO as $key: one line naming the path" one_line_error "fifo.jsonl:1" "$f" "not a regular file"
done
printf '%s\n' '{"image": "rgb32.png", "caption": "a"}' '{"image": "photo.jpg", "caption": "b"}' \
    '{"image": "./rgb32.png", "caption": "a"}' '{"caption": "c"}' '{"caption": "c"}' \
    >"$tmp/dupsrc/dup.jsonl"
run "$MMDATA" pack --manifest "$tmp/dupsrc/dup.jsonl" --out "$tmp/dup_fail" --val-fraction 0
expect "duplicate lines: exit 1" test "$rc" -eq 1
expect "duplicate lines: one line naming the first copy and the count" \
    one_line_error "dup.jsonl:3: duplicate of line 1" "2 duplicate record(s)"
expect "duplicate lines: nothing written" test ! -e "$tmp/dup_fail"
run "$MMDATA" pack --manifest "$tmp/dupsrc/dup.jsonl" --out "$tmp/dup_skip" --val-fraction 0 --on-error skip
expect "duplicate lines, skip mode: exit 0" test "$rc" -eq 0
expect "duplicate lines, skip mode: 3 packed, 2 skipped" grep -q "packed 3 of 5 samples.*skipped 2" "$tmp/out"
expect "duplicate lines, skip mode: the count is said" grep -q "2 duplicate record(s) skipped" "$tmp/err"
expect "duplicate lines, skip mode: skipped.tsv names line 5 as a copy of line 4" \
    grep -q "duplicate of line 4" "$tmp/dup_skip/skipped.tsv"

# Issue 17, item 4: packing the way folders come. Keys mapped on the command line (and the
# aliases file_name and text), Hugging Face folders, pre-split sets, caption and clip limits
# taken from the data, --schema-from for a set that must fit a base model.
h="$tmp/hf"
mkdir -p "$h/one" "$h/two/train" "$h/two/test"
for d in one two/train two/test; do cp "$src/rgb32.png" "$src/photo.jpg" "$src/ga.png" "$h/$d/"; done
printf '%s\n' '{"file_name": "rgb32.png", "text": "a red square"}' \
    '{"file_name": "photo.jpg", "text": "a photo"}' '{"file_name": "ga.png", "text": "grey"}' \
    '{"file_name": "rgb32.png", "text": "the same image, another caption"}' >"$h/one/metadata.jsonl"
run "$MMDATA" pack --folder "$h/one" --out "$tmp/hf1" --val-fraction 0.25
expect "--folder with metadata.jsonl (file_name, text) packs" grep -q "packed 4 of 4 samples: train 3 in 1 shard, val 1 in 1 shard" "$tmp/out"
expect "--folder names the manifest it read" grep -q "^splits: train and val from $h/one/metadata.jsonl$" "$tmp/out"
run "$MMDATA" inspect "$tmp/hf1" --sample 0 --out "$tmp/hf1look"
expect "file_name is the image, text the caption" \
    test "$(cat "$tmp/hf1look/sample_0.txt")" = "a red square" -a "$(png_size "$tmp/hf1look/sample_0.png")" = 32x32
run "$MMDATA" pack --manifest "$h/one/metadata.jsonl" --out "$tmp/hf1m" --val-fraction 0.25
expect "--manifest DIR/metadata.jsonl gives the same bytes as --folder DIR" cmp -s "$tmp/hf1/train/shard_00000.h5" "$tmp/hf1m/train/shard_00000.h5"

printf 'file_name,text\nrgb32.png,train one\nphoto.jpg,train two\nga.png,train three\n' >"$h/two/train/metadata.csv"
printf '%s\n' '{"file_name": "photo.jpg", "text": "test one"}' '{"file_name": "ga.png", "text": "test two"}' >"$h/two/test/metadata.jsonl"
run "$MMDATA" pack --folder "$h/two" --out "$tmp/hf2"
expect "train/ and test/: val is test, not split off" grep -q "packed 5 of 5 samples: train 3 in 1 shard, val 2 in 1 shard" "$tmp/out"
expect "train/ and test/: the summary names both files" grep -q "^splits: train from $h/two/train/metadata.csv, val from $h/two/test/metadata.jsonl$" "$tmp/out"
run "$MMDATA" inspect "$tmp/hf2" --split val --sample 1 --out "$tmp/hf2look"
expect "a val sample's sample_id is its line in the val file" grep -q "sample_id 2 " "$tmp/out"
expect "a val sample comes from the val file" test "$(cat "$tmp/hf2look/sample_1.txt")" = "test two"
mkdir -p "$h/two/validation" && cp "$src/rgb32.png" "$h/two/validation/"
echo '{"file_name": "rgb32.png", "text": "validation one"}' >"$h/two/validation/metadata.jsonl"
run "$MMDATA" pack --folder "$h/two" --out "$tmp/hf3"
expect "validation/ is preferred to test/" grep -q "val from $h/two/validation/metadata.jsonl" "$tmp/out"
run "$MMDATA" pack --folder "$h/two" --out "$tmp/hf4" --val-split test
expect "--val-split test picks test/" grep -q "val from $h/two/test/metadata.jsonl" "$tmp/out"
run "$MMDATA" pack --folder "$h/two" --out "$tmp/hf5" --val-split none --val-fraction 0.34
expect "--val-split none: val split off train" grep -q "packed 3 of 3 samples: train 2 in 1 shard, val 1 in 1 shard" "$tmp/out"
run "$MMDATA" pack --folder "$h/two" --out "$tmp/x" --val-split nope
expect "--val-split naming no folder: one line" one_line_error "$h/two/nope: no metadata.jsonl or metadata.csv (--val-split nope)"
run "$MMDATA" pack --folder "$h/two" --out "$tmp/x" --val-fraction 0.2
expect "--val-fraction with a val split: one line" one_line_error "would split val off the training records, but val comes from $h/two/validation/metadata.jsonl"
run "$MMDATA" pack --folder "$h" --out "$tmp/x"
expect "a folder without metadata: one line" one_line_error "$h: no metadata.jsonl or metadata.csv in it or in its train/"
cp "$h/one/metadata.jsonl" "$h/one/metadata.csv"
run "$MMDATA" pack --folder "$h/one" --out "$tmp/x"
expect "metadata.jsonl and metadata.csv both: one line" one_line_error "$h/one: holds both metadata.jsonl and metadata.csv"
rm "$h/one/metadata.csv"
run "$MMDATA" pack --folder "$h/one" --manifest "$h/one/metadata.jsonl" --out "$tmp/x"
expect "--folder with --manifest: exit 2" test "$rc" -eq 2
expect "nothing written by the refused folders" no_output_left "$tmp/x"

# pre-split files: --val-manifest
printf '%s\n' '{"image": "rgb32.png", "caption": "v one"}' '{"image": "ga.png", "caption": "v two"}' >"$src/val.jsonl"
run "$MMDATA" pack --manifest "$src/m.jsonl" --val-manifest "$src/val.jsonl" --out "$tmp/vm" --audio-len 4000
expect "--val-manifest: val from the file" grep -q "packed 14 of 14 samples: train 12 in 1 shard, val 2 in 1 shard" "$tmp/out"
run "$MMDATA" pack --manifest "$src/m.jsonl" --val-manifest "$src/nope.jsonl" --out "$tmp/x"
expect "--val-manifest missing: one line naming it" one_line_error "$src/nope.jsonl: cannot open"
run "$MMDATA" pack --manifest "$src/m.jsonl" --val-manifest "$src/val.jsonl" --val-fraction 0.1 --out "$tmp/x"
expect "--val-manifest with --val-fraction: exit 2" test "$rc" -eq 2
printf '%s\n' '{"image": "ga.png", "caption": "v ok"}' '{"image": "rgb32.png", "caption": "image seven"}' >"$src/valdup.jsonl"
run "$MMDATA" pack --manifest "$src/m.jsonl" --val-manifest "$src/valdup.jsonl" --out "$tmp/x"
expect "a val record that is a training one: one line naming both" \
    one_line_error "$src/valdup.jsonl:2: duplicate of $src/m.jsonl:8 (same image, audio and caption in train and val)"
printf '%s\n' '{"image": "ga.png", "caption": "v ok"}' '{"image": "nope.png"}' >"$src/valbad.jsonl"
run "$MMDATA" pack --manifest "$src/m.jsonl" --val-manifest "$src/valbad.jsonl" --out "$tmp/vskip" --on-error skip
expect "skip mode with a val manifest: skipped.tsv names the file" grep -qF "$src/valbad.jsonl:2	$src/nope.png	cannot open" "$tmp/vskip/skipped.tsv"
expect "nothing written by the refused val manifests" no_output_left "$tmp/x"

# keys
printf 'image,text\nrgb32.png,a caption in a text column\n' >"$src/text.csv"
run "$MMDATA" pack --manifest "$src/text.csv" --out "$tmp/k1" --val-fraction 0
expect "CSV 'text' column is the caption" grep -q "longest 26 bytes" "$tmp/out"
printf '%s\n' '{"img": "rgb32.png", "desc": "mapped", "label": "3"}' '{"img": "ga.png", "desc": "mapped two", "label": "4"}' >"$src/keys.jsonl"
run "$MMDATA" pack --manifest "$src/keys.jsonl" --out "$tmp/k2" --image-key img --caption-key desc --ignore-keys label,id --val-fraction 0
expect "--image-key, --caption-key, --ignore-keys" grep -q "packed 2 of 2 samples" "$tmp/out"
run "$MMDATA" inspect "$tmp/k2" --sample 1 --out "$tmp/k2look"
expect "the mapped caption comes back" test "$(cat "$tmp/k2look/sample_1.txt")" = "mapped two"
run "$MMDATA" pack --manifest "$src/keys.jsonl" --out "$tmp/x" --image-key img --caption-key desc
expect "an unmapped key: one line with the line, the key and the way out" \
    one_line_error "$src/keys.jsonl:1:" "unknown key 'label'" "--ignore-keys"
run "$MMDATA" pack --manifest "$src/keys.jsonl" --out "$tmp/x" --image-key img --caption-key txt --ignore-keys label,desc
expect "--caption-key no record has: one line" one_line_error "$src/keys.jsonl: no record has the key 'txt' (given by --caption-key)"
run "$MMDATA" pack --manifest "$src/text.csv" --out "$tmp/x" --caption-key desc
expect "--caption-key no CSV column has: one line" one_line_error "text.csv:1: header: no column 'desc' (given by --caption-key)"
run "$MMDATA" pack --manifest "$src/keys.jsonl" --out "$tmp/x" --image-key img --caption-key img
expect "one key for two fields: exit 2" test "$rc" -eq 2
expect "one key for two fields: one line" one_line_error "--image-key and --caption-key both name the key 'img'"
echo '{"image": "rgb32.png", "file_name": "ga.png"}' >"$src/twice.jsonl"
run "$MMDATA" pack --manifest "$src/twice.jsonl" --out "$tmp/x"
expect "image and file_name in one record: one line" one_line_error "twice.jsonl:1:" "keys 'image' and 'file_name' both give the image"
printf 'image,caption,text\nrgb32.png,a,b\n' >"$src/twice.csv"
run "$MMDATA" pack --manifest "$src/twice.csv" --out "$tmp/x"
expect "caption and text columns: one line" one_line_error "twice.csv:1: header: columns 'caption' and 'text' both give the caption"
printf '%s\n' '{"file_name": "rgb32.png", "text": "a"}' '{"text": "b"}' >"$h/one/nofile.jsonl"
run "$MMDATA" pack --manifest "$h/one/nofile.jsonl" --out "$tmp/x"
expect "a record without file_name among records with it: one line" one_line_error "nofile.jsonl:2:1:" "'file_name' is missing or empty"
expect "nothing written by the refused keys" no_output_left "$tmp/x"

# captions: the cap from the data, a cut never splits a character
long=$(printf 'a%.0s' $(seq 255))$(printf '\xc3\xa9')$(printf 'b%.0s' $(seq 43))
printf '{"caption": "%s"}\n{"caption": "short"}\n' "$long" >"$src/long.jsonl"
run "$MMDATA" pack --manifest "$src/long.jsonl" --out "$tmp/c1" --val-fraction 0
expect "a 300-byte caption: capped at 256, one cut, said" \
    grep -q "^captions: longest 300 bytes; text_max 256 (at most 256): 1 caption cut to it at a character boundary" "$tmp/out"
run "$MMDATA" inspect "$tmp/c1" --sample 0 --out "$tmp/c1look"
expect "the cut drops the 2-byte character at bytes 256-257 whole (255 bytes kept)" \
    test "$(wc -c <"$tmp/c1look/sample_0.txt")" -eq 255
run "$MMDATA" verify "$tmp/c1/train"
expect "the cut set verifies (strict UTF-8)" test "$rc" -eq 0
run "$MMDATA" pack --manifest "$src/long.jsonl" --out "$tmp/c2" --val-fraction 0 --text-max 10 --long-captions cut
expect "--text-max 10 --long-captions cut: counted" grep -q "1 caption longer than 10 bytes cut to it" "$tmp/out"

# audio: an outlier clip is noted, a clip past the cap is cut, an explicit length as before
sox -n -r 8000 -c 1 -b 16 "$src/snd/long3.wav" synth 3.0 sine 300 vol 0.5
sox -n -r 8000 -c 1 -b 16 "$src/snd/long12.wav" synth 12.0 sine 300 vol 0.5
{ for i in $(seq 20); do echo "{\"audio\": \"snd/a16k.flac\", \"caption\": \"clip $i\"}"; done
  echo '{"audio": "snd/long3.wav", "caption": "long"}'; } >"$src/outlier.jsonl"
run "$MMDATA" pack --manifest "$src/outlier.jsonl" --out "$tmp/a1" --val-fraction 0
expect "one long clip among short ones: audio_len is the longest" grep -q "^audio: audio_len 24064 " "$tmp/out"
expect "one long clip among short ones: a note names the p95 length" \
    grep -q "^audio: note: audio_len is 10.0 times the p95 clip; --audio-len 2400 would shorten 1 clips" "$tmp/out"
printf '%s\n' '{"audio": "snd/long12.wav"}' '{"audio": "snd/a8k.wav"}' >"$src/cap.jsonl"
run "$MMDATA" pack --manifest "$src/cap.jsonl" --out "$tmp/a2" --val-fraction 0
expect "a 12 s clip: audio_len capped at 10 s" grep -q "^audio: audio_len 80000 (10.000 s, 624 log-mel frames.*the cap of 10 s" "$tmp/out"
expect "a 12 s clip: counted as cut" grep -q "1 clip longer than 80000 samples cut to it" "$tmp/out"
run "$MMDATA" pack --manifest "$src/m.jsonl" --out "$tmp/a3" --val-fraction 0 --audio-len 4000
expect "explicit --audio-len 4000: no survey, 3 clips cut as before" \
    grep -q "3 clips longer than 4000 samples cut" "$tmp/out"
expect "explicit --audio-len: no audio report" test "$(grep -c '^audio:' "$tmp/out")" -eq 0

# --schema-from: a set packed to fit a base model's shapes (its training set's schema)
"$MMDATA" synth --out "$tmp/base" --samples 8 >/dev/null
run "$MMDATA" pack --manifest "$src/m.jsonl" --out "$tmp/s1" --val-fraction 0 --schema-from "$tmp/base"
run "$MMDATA" inspect "$tmp/s1"
expect "--schema-from: the base set's schema" grep -q "schema: image 32x32x3 uint8, audio 8000 Hz x 4000 samples int16 mono (0.500 s), captions <= 48 bytes" "$tmp/out"
run "$MMDATA" pack --manifest "$src/m.jsonl" --out "$tmp/x" --schema-from "$tmp/nobase"
expect "--schema-from a non-dataset: one line" one_line_error "--schema-from:" "nobase"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
