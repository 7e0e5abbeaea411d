#!/usr/bin/env bash
# fashion_speech.sh: builds the project's own real paired set (issue 17) from what Debian
# ships, so that training can be judged on real photos and real speech, not only on the
# synthetic rule: Fashion-MNIST photos (dataset-fashion-mnist), their class names spoken by
# espeak-ng, short captions; 4000 training samples from the package's train file, 500 test
# samples from its t10k file, sound in half the training samples and in no test sample, and
# with --dev N a development split to tune on (t10k, no sound, no image shared with either).
# It writes the files (fashion_speech.py), then packs each split with `mmdata pack` into
# OUT/train and OUT/test (mmdata datasets). data/real/README.md has the why and the numbers.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

usage() {
    cat <<EOF
usage: data/real/fashion_speech.sh [--out DIR] [--train N] [--test N] [--dev N] [--seed S]
                                   [--threads N] [--mmdata PATH]
Builds the Fashion-MNIST + spoken class names set into DIR (default: data/real/fashion_speech
in the repository, where configs/fashion_tiny.yaml looks for it):
  DIR/files/     PNG images, WAV clips, train.jsonl and test.jsonl (pack manifests),
                 *_labels.tsv (class, source index, pixel sha1, speech settings per line),
                 *_pixels.u8 (raw pixels in manifest order, for data/real/baseline.py)
  DIR/train      mmdata dataset: N training samples (default 4000), half with sound
  DIR/test       mmdata dataset: N test samples (default 500), none with sound
  DIR/dev        with --dev N: N development samples, none with sound, sharing no image with
                 train or test: choose settings on it and score the test set once at the end
                 (data.val=DIR/dev; data/real/score.py RUN --labels DIR/files/dev_labels.tsv)
  DIR/BUILD      the settings it was built with; a second run with the same ones does nothing
Installs the Debian packages dataset-fashion-mnist and espeak-ng when missing (as root) and
builds build/mmdata when missing. Schema: 28x28x1 images, 8000 Hz audio of 10000 samples
(1.25 s; clips are trimmed and sped up to fit), captions of at most 32 bytes.
EOF
}
for a in "$@"; do  # --help anywhere wins over every other error
    case "$a" in -h|--help) usage; exit 0 ;; esac
done
die() { echo "error: fashion_speech.sh: $1" >&2; exit "${2:-1}"; }  # message, exit status

out=$root/data/real/fashion_speech
n_train=4000 n_test=500 n_dev=0 seed=1 threads=$(nproc) mmdata=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out|--train|--test|--dev|--seed|--threads|--mmdata)
            [ $# -ge 2 ] || die "$1 needs a value (see --help)" 2
            case "$1" in
                --out) out=$2 ;; --train) n_train=$2 ;; --test) n_test=$2 ;; --dev) n_dev=$2 ;;
                --seed) seed=$2 ;; --threads) threads=$2 ;; --mmdata) mmdata=$2 ;;
            esac
            shift 2 ;;
        *) die "unknown argument '$1' (see --help)" 2 ;;
    esac
done
for v in "--train $n_train" "--test $n_test" "--dev $n_dev" "--seed $seed" "--threads $threads"; do
    [[ ${v#* } =~ ^[0-9]+$ ]] || die "${v% *} '${v#* }': not a non-negative integer" 2
done
[ "$n_dev" -eq 0 ] || [ "$n_dev" -ge 10 ] || die "--dev $n_dev: 0 or at least 10 samples (one per class)" 2

# --- what it needs ---------------------------------------------------------------------
src=/usr/share/datasets/fashion-mnist
need=()
[ -f "$src/train-images-idx3-ubyte.gz" ] || need+=(dataset-fashion-mnist)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "needs the Debian packages ${need[*]}: no apt-get here"
    [ "$(id -u)" -eq 0 ] || die "needs the Debian packages ${need[*]}: run as root or install them"
    echo "fashion_speech.sh: installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
        die "apt-get install ${need[*]} failed"
fi
command -v python3 >/dev/null 2>&1 || die "needs python3"
if [ -z "$mmdata" ]; then
    mmdata=$root/build/mmdata
    [ -x "$mmdata" ] || make -C "$root" -j2 build/mmdata >/dev/null || die "make build/mmdata failed"
fi
[ -x "$mmdata" ] || die "--mmdata $mmdata: not an executable"

# --- up to date? -------------------------------------------------------------------------
# The packed schema; fashion_speech.py's TEXT_MAX and --max-seconds must agree with it. The
# images keep pack's default shape (32x32 RGB, the 28x28 grey photos scaled up), as a user's
# folder packed without options gets, so configs made for such sets train on it unchanged.
pack_opts=(--audio-rate 8000 --audio-len 10000 --text-max 32)
splits=(train test)
dev_stamp=""
if [ "$n_dev" -gt 0 ]; then splits+=(dev); dev_stamp=" dev=$n_dev"; fi
stamp="fashion_speech v2 train=$n_train test=$n_test$dev_stamp seed=$seed pack=${pack_opts[*]}"
if [ -e "$out" ]; then
    if [ -f "$out/BUILD" ] && [ "$(cat "$out/BUILD")" = "$stamp" ] &&
        [ -f "$out/train/index.json" ] && [ -f "$out/test/index.json" ] &&
        { [ "$n_dev" -eq 0 ] || [ -f "$out/dev/index.json" ]; }; then
        echo "fashion_speech.sh: $out is up to date ($stamp)"
        exit 0
    fi
    if [ -f "$out/BUILD" ]; then
        die "$out was built with other settings ($(cat "$out/BUILD")): remove it or pick another --out"
    fi
    [ -z "$(ls -A "$out")" ] || die "$out exists and is not a set this script built: remove it or pick another --out"
    rmdir "$out"
fi

# --- build beside it, then rename: a failed or interrupted run leaves no $out --------------
work="$out.building-$$"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
t0=$SECONDS
python3 "$here/fashion_speech.py" --out "$work/files" --source "$src" --train "$n_train" \
    --test "$n_test" --dev "$n_dev" --seed "$seed" --threads "$threads" --max-seconds 1.25
for split in "${splits[@]}"; do
    # one split per manifest: --val-fraction 0 puts every sample in the pack's train split
    "$mmdata" pack --manifest "$work/files/$split.jsonl" --out "$work/pack-$split" \
        --val-fraction 0 --seed "$seed" --threads "$threads" "${pack_opts[@]}" >"$work/pack-$split.log" ||
        { cat "$work/pack-$split.log" >&2; die "mmdata pack of the $split split failed"; }
    sed "s|^[^:]*: |$split: |" "$work/pack-$split.log"
    ! grep -q 'cut to it' "$work/pack-$split.log" || die "$split: clips longer than --audio-len were cut"
    mv "$work/pack-$split/train" "$work/$split"
    rm -rf "$work/pack-$split" "$work/pack-$split.log"
done
echo "$stamp" >"$work/BUILD"
mv "$work" "$out"
trap - EXIT
for split in "${splits[@]}"; do
    "$mmdata" inspect "$out/$split" | grep 'modalities' | sed "s/^ */$split: /"
done
echo "fashion_speech.sh: built $out in $((SECONDS - t0))s (train: $out/train, test: $out/test$(
    [ "$n_dev" -eq 0 ] || echo ", dev: $out/dev"))"
