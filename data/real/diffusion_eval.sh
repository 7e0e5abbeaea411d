#!/usr/bin/env bash
# diffusion_eval.sh: judges a diffusion run on the Fashion-MNIST + speech set (fashion_speech.sh)
# by what it draws: for each class, images from its caption and from fresh spoken class names,
# each classified by a CNN trained on the set's real photos (data/real/judge.py), so that
# issue 17's "does the generator draw the asked class" is a per-class number. The trainer's
# cond_acc reads the synthetic set's rule and is not computed on this set.
# data/real/DIFFUSION.md has the why, the commands and the measured numbers.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

usage() {
    cat <<EOF
usage: data/real/diffusion_eval.sh [options] RUN_DIR [section.key=value ...]
Samples a diffusion checkpoint of RUN_DIR (its latest; EMA weights) for every class of the
set and judges each image with a small CNN trained on the real training photos.
  --train         first train RUN_DIR with configs/fashion_diffusion_tiny.yaml (resumed when
                  it has a checkpoint); trailing section.key=value override its keys
  --np N          ranks of that training run (2; mpirun --oversubscribe --bind-to none)
  --data DIR      the set as fashion_speech.sh builds it (default data/real/fashion_speech):
                  DIR/train, DIR/test and DIR/files/{train,test}_{pixels.u8,labels.tsv}
  --out DIR       where to write (default RUN_DIR/diffusion_eval)
  --n N           images per class from its caption prompt (20)
  --clips K       fresh spoken clips per class (4) and --per-clip M images each (5)
  --per-clip M
  --seed S        sampling seed (1): the caption prompts use S, clip k of a class S+1+k
  --guidance G    classifier-free guidance (default: the checkpoint's diffusion.guidance)
  --judge FILE    a judge from judge.py train (default OUT/judge.pt, trained when missing)
Writes OUT/judge.pt, OUT/prompts/ (prompts.tsv, the clips), OUT/caption/CLASS/ and
OUT/sound/CLASS_K/ (train sample's PNGs), OUT/list.tsv (path, class, kind),
OUT/list_scores.json, OUT/grid.png (6 images per class: caption | sound) and OUT/report.txt.
Needs python3 with torch and numpy (skipped with a note without them), espeak-ng, and
fashion_speech.py and baseline.py beside this script.
EOF
}
for a in "$@"; do  # --help anywhere wins over every other error
    case "$a" in -h|--help) usage; exit 0 ;; esac
done
die() { echo "error: diffusion_eval.sh: $1" >&2; exit "${2:-1}"; }  # message, exit status

train=0 np=2 data=data/real/fashion_speech out="" n=20 clips=4 per_clip=5 seed=1 guidance=""
judge="" run="" overrides=()
while [ $# -gt 0 ]; do
    case "$1" in
        --train) train=1; shift ;;
        --np|--data|--out|--n|--clips|--per-clip|--seed|--guidance|--judge)
            [ $# -ge 2 ] || die "$1 needs a value (see --help)" 2
            case "$1" in
                --np) np=$2 ;; --data) data=$2 ;; --out) out=$2 ;; --n) n=$2 ;;
                --clips) clips=$2 ;; --per-clip) per_clip=$2 ;; --seed) seed=$2 ;;
                --guidance) guidance=$2 ;; --judge) judge=$2 ;;
            esac
            shift 2 ;;
        -*) die "unknown option '$1' (see --help)" 2 ;;
        *=*) [ -n "$run" ] || die "'$1' before RUN_DIR (see --help)" 2
             overrides+=("$1"); shift ;;
        *) [ -z "$run" ] || die "a second RUN_DIR '$1' (first '$run')" 2
           run=$1; shift ;;
    esac
done
[ -n "$run" ] || die "no RUN_DIR given (see --help)" 2
for v in "--np $np" "--n $n" "--clips $clips" "--per-clip $per_clip"; do
    [[ ${v#* } =~ ^[1-9][0-9]*$ ]] || die "${v% *} '${v#* }': not a positive integer" 2
done
[[ $seed =~ ^[0-9]+$ ]] || die "--seed '$seed': not a non-negative integer" 2
[ "${#overrides[@]}" -eq 0 ] || [ "$train" -eq 1 ] || die "key overrides need --train" 2
out=${out:-$run/diffusion_eval}
judge=${judge:-$out/judge.pt}

# --- what it needs ---------------------------------------------------------------------
if ! python3 -c "import torch, numpy" >/dev/null 2>&1; then
    echo "diffusion_eval.sh: skipped: python3 has no torch or numpy (pip install torch numpy)"
    exit 0
fi
for f in fashion_speech.py baseline.py judge.py; do
    [ -f "$here/$f" ] || die "$here/$f is missing (it comes with data/real/)"
done
command -v espeak-ng >/dev/null 2>&1 || die "needs espeak-ng for the sound prompts (apt-get install espeak-ng)"
for d in "$data/train" "$data/test" "$data/files"; do
    [ -d "$d" ] || die "--data $data: no $d (build the set: data/real/fashion_speech.sh)"
done
bin=$root/build/train
[ -x "$bin" ] || make -C "$root" -j2 build/train >/dev/null || die "make build/train failed"

# --- train ------------------------------------------------------------------------------
if [ "$train" -eq 1 ]; then
    rootflag=(); [ "$(id -u)" -ne 0 ] || rootflag=(--allow-run-as-root)
    echo "diffusion_eval.sh: training $run ($np ranks)"
    mpirun "${rootflag[@]}" --oversubscribe --bind-to none -np "$np" "$bin" \
        "$root/configs/fashion_diffusion_tiny.yaml" "run.out_dir=$run" "data.train=$data/train" \
        "data.val=$data/test" "${overrides[@]}" || die "training $run failed"
fi
[ -d "$run" ] || die "RUN_DIR $run: no such directory (train it first: --train)"

# --- judge, prompts, samples ----------------------------------------------------------
mkdir -p "$out"
if [ ! -f "$judge" ]; then
    python3 "$here/judge.py" train --files "$data/files" --out "$judge" || die "judge.py train failed"
fi
rm -rf "$out/prompts" "$out/caption" "$out/sound"
python3 "$here/judge.py" prompts --out "$out/prompts" --per-class "$clips" \
    --labels "$data/files/train_labels.tsv" || die "judge.py prompts failed"
g=(); [ -z "$guidance" ] || g=(--guidance "$guidance")
# One thread: a sampler batch of 20 tiny images gains nothing from more, and OpenMP threads
# that spin beside other jobs on a shared machine made a call 3x (under load 100x) slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
list=$out/list.tsv
printf 'path\tclass\tkind\n' >"$list"
k=0 prev=-1
while IFS=$'\t' read -r kind class name prompt _; do
    [ "$kind" != kind ] || continue
    if [ "$kind" = caption ]; then
        dir=caption/${name// /_}
        "$bin" sample --ckpt "$run" --out "$out/$dir" --text "$prompt" --n "$n" --seed "$seed" \
            "${g[@]}" >"$out/sample.log" 2>&1 ||
            die "train sample for '$prompt' failed: $(tail -n 1 "$out/sample.log")"
        m=$n
    else
        [ "$class" = "$prev" ] || k=0
        prev=$class
        dir=sound/${prompt%.wav}
        "$bin" sample --ckpt "$run" --out "$out/$dir" --audio "$out/prompts/$prompt" \
            --n "$per_clip" --seed $((seed + 1 + k)) "${g[@]}" >"$out/sample.log" 2>&1 ||
            die "train sample for $prompt failed: $(tail -n 1 "$out/sample.log")"
        k=$((k + 1)) m=$per_clip
    fi
    for ((i = 0; i < m; i++)); do
        printf '%s/sample_%03d.png\t%s\t%s\n' "$dir" "$i" "$class" "$kind"
    done >>"$list"
done <"$out/prompts/prompts.tsv"
step=$(sed -n 's/.*(step \([0-9]*\)).*/\1/p' "$out/sample.log")
echo "diffusion_eval.sh: sampled $run at step $step: $n images per caption, $clips x $per_clip" \
    "per class from sound (seed $seed, guidance ${guidance:-of the checkpoint})"

# --- score ------------------------------------------------------------------------------
python3 "$here/judge.py" score --judge "$judge" --list "$list" --grid "$out/grid.png" |
    tee "$out/report.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || die "judge.py score failed"
