#!/usr/bin/env bash
# real_set.sh: a fast check of data/real/fashion_speech.sh, the project's own real paired set
# (the full set takes a minute and training on it four: too slow for the suite), on a tiny
# version (50 training, 20 test, 20 development samples): it builds and packs; every split
# verifies; no image is in two splits (sha1 of the pixels the packed datasets hold, written
# back out by mmdata inspect); training samples come from the package's train file and test
# and development samples from its t10k file, class-balanced; sound is in half the training
# samples and in no test or development sample; every test caption names its label's class;
# the same seed gives the same bytes, and the same training and test sets without --dev; a
# second run does nothing; bad arguments get one error line. And data/real/score.py on a
# made-up eval file whose right answers are known. Skipped with a note when
# dataset-fashion-mnist or espeak-ng is missing and cannot be installed.
# Ends with "N passed, N failed".
set -u
B=${MM_BUILD:-build}
MMDATA="$B/mmdata"
root=$(cd "$(dirname "$0")/.." && pwd)
script="$root/data/real/fashion_speech.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0

skip() { echo "real_set: skipped: $1"; echo "0 passed, 0 failed"; exit 0; }
need=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
if [ ${#need[@]} -gt 0 ]; then
    { [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; } ||
        skip "${need[*]} not installed and not root with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } \
        >/dev/null 2>&1 || skip "${need[*]} not installed and apt-get install failed"
fi
command -v python3 >/dev/null 2>&1 || skip "no python3"

run() {  # CMD...: status in $rc, stdout in $tmp/out, stderr in $tmp/err
    "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}
ok() {  # description, condition...
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
build() {  # OUT [more options]
    local out=$1
    shift
    run bash "$script" --out "$out" --train 50 --test 20 --seed 3 --threads 2 --mmdata "$MMDATA" "$@"
}
refused() {  # exit status, the start of the one error line after the script's name
    [ "$rc" -eq "$1" ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] &&
        grep -qF "error: fashion_speech.sh: $2" "$tmp/err"
}
same_sets() { cmp -s "$1/train/index.json" "$2/train/index.json" && cmp -s "$1/test/index.json" "$2/test/index.json"; }

S=$tmp/set
F=$S/files
build "$S" --dev 20
ok "builds a 50/20/20 set" test "$rc" -eq 0 -a -f "$S/train/index.json" -a -f "$S/test/index.json" \
    -a -f "$S/dev/index.json"
run "$MMDATA" verify "$S/train"
ok "the training split verifies with 50 samples" grep -q "ok: 50 samples" "$tmp/out"
for split in test dev; do
    run "$MMDATA" verify "$S/$split"
    ok "the $split split verifies with 20 samples" grep -q "ok: 20 samples" "$tmp/out"

    # sound: inspect's modality counts of each packed split
    run "$MMDATA" inspect "$S/$split"
    ok "no $split sample has sound" grep -q "modalities: image 20 (100.0%), audio 0 " "$tmp/out"
done
run "$MMDATA" inspect "$S/train"
n_audio=$(sed -n 's/.*modalities: image 50 (100.0%), audio \([0-9]*\) .*/\1/p' "$tmp/out")
ok "about half the training samples have sound ($n_audio of 50)" \
    test "${n_audio:-0}" -ge 20 -a "${n_audio:-0}" -le 30

# disjoint by content: the pixels each packed sample holds, hashed
for split in train test dev; do
    n=$([ $split = train ] && echo 50 || echo 20)
    for ((i = 0; i < n; i++)); do
        "$MMDATA" inspect "$S/$split" --sample $i --out "$tmp/look-$split" >/dev/null 2>&1 || echo "inspect failed"
    done
    sha1sum "$tmp/look-$split"/sample_*.png | cut -d' ' -f1 | sort >"$tmp/$split.sha"
done
ok "every packed image was written back" test "$(wc -l <"$tmp/train.sha")" -eq 50 \
    -a "$(wc -l <"$tmp/test.sha")" -eq 20 -a "$(wc -l <"$tmp/dev.sha")" -eq 20
ok "no test image is a training image" test -z "$(comm -12 "$tmp/train.sha" "$tmp/test.sha")"
ok "no development image is a training or test image" \
    test -z "$(sort -m "$tmp/train.sha" "$tmp/test.sha" | comm -12 - "$tmp/dev.sha")"
ok "no image repeats within a split" test "$(uniq "$tmp/train.sha" | wc -l)" -eq 50 \
    -a "$(uniq "$tmp/test.sha" | wc -l)" -eq 20 -a "$(uniq "$tmp/dev.sha" | wc -l)" -eq 20

# sources, balance and captions, from the label files and the manifests
run python3 - "$F" <<'EOF'
import json, sys, collections
files = sys.argv[1]
for split, src, n in (("train", "train", 50), ("test", "t10k", 20), ("dev", "t10k", 20)):
    rows = [r.rstrip("\n").split("\t") for r in open(f"{files}/{split}_labels.tsv")][1:]
    recs = [json.loads(l) for l in open(f"{files}/{split}.jsonl")]
    assert len(rows) == len(recs) == n, (split, len(rows), len(recs))
    assert all(r[3] == src for r in rows), f"{split}: a sample not from {src}"
    counts = collections.Counter(int(r[1]) for r in rows)
    assert sorted(counts.values()) == [n // 10] * 10, f"{split}: classes {counts}"
    for r, rec in zip(rows, recs):
        assert ("audio" in rec) == (r[6] != "-"), f"{split} line {r[0]}: speech column"
print("ok")
EOF
ok "samples from the right source file, class-balanced, speech listed where there is sound" \
    grep -qx ok "$tmp/out"

# determinism and idempotence; the development split draws from a stream of its own
build "$tmp/again"
ok "the same seed gives the same training and test sets, with --dev or without (shard checksums)" \
    same_sets "$S" "$tmp/again"
ok "without --dev there is no development split" test ! -e "$tmp/again/dev" -a ! -e "$tmp/again/files/dev.jsonl"
build "$S" --dev 20
ok "a second run with the same settings does nothing" \
    test "$rc" -eq 0 -a -n "$(grep 'up to date' "$tmp/out")"

# bad input
build "$tmp/bad" --train x
ok "a bad count: exit 2, one line" refused 2 "--train 'x'"
build "$tmp/bad" --bogus
ok "an unknown option: exit 2, one line" refused 2 "unknown argument '--bogus'"
build "$tmp/bad" --dev 5
ok "a development split smaller than the classes: exit 2, one line" refused 2 "--dev 5: 0 or at least 10"
run bash "$script" --out "$S" --train 60 --test 20 --seed 3 --mmdata "$MMDATA"
ok "other settings into a built set: exit 1, naming the set" refused 1 "$S was built"
mkdir -p "$tmp/full" && touch "$tmp/full/x"
build "$tmp/full"
ok "a folder that is not such a set: exit 1" refused 1 "$tmp/full exists"

# score.py: 20 made-up captions of the test set, 12 of them right. With --labels it also
# checks that each reference names its label's class (and so that every test caption does).
# The first 8 also carry a caption from the sound alone (as eval.audio_captions writes), 5
# of them right: scored apart, over those 8.
python3 - "$F/test.jsonl" "$F/test_labels.tsv" "$tmp/run/eval/step_00000010.jsonl" \
    "$tmp/mislabelled.jsonl" <<'EOF'
import json, os, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
classes = [r.split("\t")[1] for r in open(sys.argv[2])][1:]
os.makedirs(os.path.dirname(sys.argv[3]))
gens = []
for k, r in enumerate(recs):
    ref = r["caption"]
    if k < 10:
        gen = ref                                   # right
    elif k < 12:
        gen = ref.upper() + " again"                # right: case and other words do not matter
    elif k < 14:
        gen = "a photo of a"                        # no class
    elif k < 16:
        gen = ref + " or a bag or a coat"           # several classes (at least two)
    else:
        gen = "a t-shirt" if "t-shirt" not in ref else "a shirt"   # another class
    rec = {"sample_id": k + 1, "reference": ref, "generated": gen}
    if k < 8:
        rec["generated_audio"] = ref if k < 5 else "a photo of a"
    gens.append(json.dumps(rec))
open(sys.argv[3], "w").write("\n".join(gens) + "\n")
# the first line again, under the sample_id of a sample of another class
other = next(k for k, c in enumerate(classes) if c != classes[0]) + 1
open(sys.argv[4], "w").write(gens[0].replace('"sample_id": 1,', f'"sample_id": {other},') + "\n")
EOF
run python3 "$root/data/real/score.py" "$tmp/run" --labels "$F/test_labels.tsv"
ok "score.py: 12 of 20 right" grep -q "^accuracy 60.0% (12/20)" "$tmp/out"
ok "score.py: the kinds of wrong" grep -q "^wrong: another class 4, several classes 2, no class 2" "$tmp/out"
ok "score.py: captions from the sound alone, 5 of 8 right" grep -q "^audio only: accuracy 62.5% (5/8)" "$tmp/out"
ok "score.py: no image-only line without such captions" bash -c '! grep -q "^image only" "$1"' _ "$tmp/out"
run python3 "$root/data/real/score.py" "$tmp/mislabelled.jsonl" --labels "$F/test_labels.tsv"
ok "score.py: a reference that disagrees with the labels is an error" \
    grep -q "^error: score.py: .*mislabelled.jsonl:1: sample_id [0-9]*: reference" "$tmp/err"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
