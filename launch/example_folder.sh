#!/usr/bin/env bash
# example_folder.sh: makes a folder of ordinary media files (PNG images, WAV sounds, .txt
# captions and a manifest.jsonl listing them), so that README's "Fine-tune on your own data"
# can be followed end to end without bringing data. The files are drawn from the synthetic
# generator with only yellow, purple and white objects (the demo models are trained on all
# six colours), written out one sample at a time by `mmdata inspect`, exactly as a user's
# own files would arrive; nothing in it is specific to mmtrain's formats.
#   launch/example_folder.sh DIR [N]      (N samples, default 600)
set -euo pipefail
usage() {
    cat <<'EOF'
usage: launch/example_folder.sh DIR [N]
  Writes N samples (600) of ordinary files into the new folder DIR: img/*.png, wav/*.wav,
  txt/*.txt and manifest.jsonl listing them, ready for `mmdata pack --manifest`.
environment: MMDATA (build/mmdata)
EOF
}
for a in "$@"; do  # --help anywhere wins over every other error
    case "$a" in -h | --help) usage; exit 0 ;; esac
done
die() { echo "error: example_folder.sh: $1 (see --help)" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || die "wants DIR and at most N, got $# arguments"
[[ "$1" != -* ]] || die "unknown option '$1'"
DIR=$1
N=${2:-600}
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "N '$N' is not a positive number"
MMDATA=${MMDATA:-build/mmdata}
[ -x "$MMDATA" ] || { echo "example_folder.sh: $MMDATA not built (run make)" >&2; exit 1; }
[ ! -e "$DIR" ] || { echo "example_folder.sh: $DIR exists; choose a new folder" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$MMDATA" synth --out "$tmp/set" --samples "$N" --seed 7 --only colour=yellow,purple,white \
    >/dev/null
mkdir -p "$DIR/img" "$DIR/wav" "$DIR/txt"
: >"$DIR/manifest.jsonl"
for ((i = 0; i < N; i++)); do
    "$MMDATA" inspect "$tmp/set" --sample "$i" --out "$tmp/one" >/dev/null
    line="{\"caption_file\": \"txt/$i.txt\""
    mv "$tmp/one/sample_$i.txt" "$DIR/txt/$i.txt"
    if [ -f "$tmp/one/sample_$i.png" ]; then
        mv "$tmp/one/sample_$i.png" "$DIR/img/$i.png"
        line+=", \"image\": \"img/$i.png\""
    fi
    if [ -f "$tmp/one/sample_$i.wav" ]; then
        mv "$tmp/one/sample_$i.wav" "$DIR/wav/$i.wav"
        line+=", \"audio\": \"wav/$i.wav\""
    fi
    echo "$line}" >>"$DIR/manifest.jsonl"
done
echo "example_folder.sh: $N samples in $DIR (img/, wav/, txt/, manifest.jsonl)"
